//! Crashes on purpose, for the tests of what a crash at each step leaves: with the
//! `fail-points` feature (test builds only; never in a package), `HOSTCHAN_FAIL_AT=<step>`
//! kills hostchan with SIGKILL at that step. The steps of `create`, in order:
//! `after-record`, `after-dirs`, `after-job-queued`, `before-attach`.

#[cfg(feature = "fail-points")]
pub fn hit(step: &str) {
    if std::env::var("HOSTCHAN_FAIL_AT").is_ok_and(|at| at == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fail-points"))]
pub fn hit(_step: &str) {}
