//! Crashes and pauses on purpose, for the tests of what a crash or a race at each step leaves:
//! with the `fail-points` feature (test builds only; never in a package),
//! `HOSTCHAN_FAIL_AT=<step>` kills hostchan with SIGKILL at that step, and
//! `HOSTCHAN_PAUSE_AT=<step>:<ms>` makes it wait there. The steps of `create`, in order:
//! `after-record`, `after-dirs`, `after-job-queued`, `before-attach`; of `delete`:
//! `delete-after-stop`.

#[cfg(feature = "fail-points")]
pub fn hit(step: &str) {
    if std::env::var("HOSTCHAN_FAIL_AT").is_ok_and(|at| at == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    if let Ok(pause) = std::env::var("HOSTCHAN_PAUSE_AT") {
        if let Some(ms) = pause
            .strip_prefix(step)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|ms| ms.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

#[cfg(not(feature = "fail-points"))]
pub fn hit(_step: &str) {}
