//! Crashes, errors and pauses on purpose, for the tests of what a crash, a failure or a race at
//! each step leaves (bootupd's fail points). Only with the `fail-points` feature (test builds;
//! never in a package). `HOSTCHAN_FAIL_AT` is a comma-separated list of steps: `<step>` kills
//! hostchan with SIGKILL there ([`hit`]), `<step>:error` makes that step fail with an error
//! instead of doing its work ([`check`]). `HOSTCHAN_PAUSE_AT=<step>:<ms>` waits there.
//!
//! Kill steps of `create`, in order: `after-record`, `after-dirs`, `after-job-queued`,
//! `before-attach`; of the teardown: `delete-after-stop`. Error steps of `create`:
//! `create-start` (the start of the units), `before-attach`, `create-memory`, `create-done`
//! (everything made: the whole rollback runs); of the teardown
//! (rollback and delete): `teardown-detach`, `teardown-stop`, `teardown-remove`,
//! `teardown-memory`.

use crate::error::Result;

#[cfg(feature = "fail-points")]
fn asked(step: &str, how: Option<&str>) -> bool {
    std::env::var("HOSTCHAN_FAIL_AT").is_ok_and(|list| {
        list.split(',').any(|entry| match entry.split_once(':') {
            Some((at, kind)) => at == step && how == Some(kind),
            None => entry == step && how.is_none(),
        })
    })
}

/// A kill step, and a pause step.
#[cfg(feature = "fail-points")]
pub fn hit(step: &str) {
    if asked(step, None) {
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

/// How long a D-Bus call waits for systemd's answer: `default`, or HOSTCHAN_DBUS_TIMEOUT_MS in
/// test builds (the tests of what a timeout leaves do not wait 25 s).
#[cfg(feature = "fail-points")]
pub fn method_timeout(default: std::time::Duration) -> std::time::Duration {
    std::env::var("HOSTCHAN_DBUS_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(default, std::time::Duration::from_millis)
}

#[cfg(not(feature = "fail-points"))]
pub fn method_timeout(default: std::time::Duration) -> std::time::Duration {
    default
}

/// An error step: `Err` where the tests asked this step to fail.
#[cfg(feature = "fail-points")]
pub fn check(step: &str) -> Result<()> {
    if asked(step, Some("error")) {
        return Err(crate::error::Error::runtime(format!("fail point {step}")));
    }
    Ok(())
}

#[cfg(not(feature = "fail-points"))]
pub fn check(_step: &str) -> Result<()> {
    Ok(())
}
