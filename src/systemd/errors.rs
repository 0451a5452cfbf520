//! systemd's answers when a D-Bus call fails, in hostchan's error kinds with systemd's own
//! words, and how many calls failed in this process (the NRI plugin's metrics).

use crate::error::{Error, Kind};

/// A D-Bus failure in hostchan's error kinds, keeping systemd's own words.
impl From<zbus::Error> for Error {
    fn from(err: zbus::Error) -> Error {
        dbus_error(err)
    }
}

/// sd-bus's default for a call: one systemd never answers fails rather than hangs the engine.
pub(super) const METHOD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// D-Bus calls to systemd that failed in this process, but for the answers that are part of
/// the work (no such unit, a name still taken): for the plugin's metrics.
static DBUS_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many D-Bus calls to systemd failed in this process (see [`DBUS_ERRORS`]).
pub fn dbus_errors() -> u64 {
    DBUS_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

fn dbus_error(err: zbus::Error) -> Error {
    counted(dbus_error_of(err))
}

/// Counts `error` in [`DBUS_ERRORS`] unless it is an answer that is part of the work.
fn counted(error: Error) -> Error {
    if error.kind() == Kind::Systemd {
        DBUS_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    error
}

fn dbus_error_of(err: zbus::Error) -> Error {
    if let zbus::Error::MethodError(name, detail, _) = &err {
        return method_error(name.as_str(), detail.as_deref().unwrap_or_default());
    }
    if let zbus::Error::InputOutput(io) = &err {
        if io.kind() == std::io::ErrorKind::TimedOut {
            return Error::systemd(format!(
                "systemd did not answer within {} s (is PID 1 busy or hung?)",
                crate::fail_point::method_timeout(METHOD_TIMEOUT).as_secs_f64()
            ));
        }
    }
    Error::systemd("D-Bus error talking to systemd").caused_by(err)
}

/// An error reply from systemd (or the bus) in hostchan's kinds, with systemd's own words.
fn method_error(name: &str, detail: &str) -> Error {
    match name {
        "org.freedesktop.systemd1.NoSuchUnit" => Error::not_found(detail),
        "org.freedesktop.systemd1.UnitExists" => Error::already_exists(detail),
        "org.freedesktop.DBus.Error.AccessDenied"
        | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => Error::systemd(format!(
            "permission denied by systemd ({detail}); run hostchan as root"
        )),
        _ => Error::systemd(format!("systemd refused: {detail} ({name})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn systemd_replies_map_to_kinds() {
        let cases = [
            (
                "org.freedesktop.systemd1.NoSuchUnit",
                Kind::NotFound,
                "Unit x not loaded.",
            ),
            (
                "org.freedesktop.systemd1.UnitExists",
                Kind::AlreadyExists,
                "Unit x already exists.",
            ),
            (
                "org.freedesktop.DBus.Error.AccessDenied",
                Kind::Systemd,
                "permission denied by systemd (Access denied); run hostchan as root",
            ),
            (
                "org.freedesktop.DBus.Error.InvalidArgs",
                Kind::Systemd,
                "systemd refused: Bad (org.freedesktop.DBus.Error.InvalidArgs)",
            ),
        ];
        for (name, kind, expected) in cases {
            let detail = match kind {
                Kind::NotFound => "Unit x not loaded.",
                Kind::AlreadyExists => "Unit x already exists.",
                _ if name.ends_with("AccessDenied") => "Access denied",
                _ => "Bad",
            };
            let error = method_error(name, detail);
            assert_eq!(error.kind(), kind, "{name}");
            assert_eq!(error.to_string(), expected, "{name}");
        }
    }

    /// What the plugin's `hostchan_dbus_errors_total` counts: a call that failed (PID 1 did not
    /// answer in time, the bus broke), not an answer that is part of the work.
    #[test]
    fn failed_calls_are_counted_and_answers_are_not() {
        let before = dbus_errors();
        let timed_out = Error::from(zbus::Error::InputOutput(std::sync::Arc::new(
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )));
        assert_eq!(timed_out.kind(), Kind::Systemd);
        assert!(
            timed_out.to_string().contains("did not answer"),
            "{timed_out}"
        );
        let broken = Error::from(zbus::Error::Failure("the bus went away".into()));
        assert_eq!(broken.kind(), Kind::Systemd);
        assert_eq!(dbus_errors() - before, 2);
        let answer = counted(method_error(
            "org.freedesktop.systemd1.NoSuchUnit",
            "Unit x not loaded.",
        ));
        assert_eq!(answer.kind(), Kind::NotFound);
        assert_eq!(dbus_errors() - before, 2);
    }
}
