//! The plugin's word to systemd (`Type=notify`, sd_notify(3)): READY once it serves the runtime,
//! STATUS while it does not, and the watchdog's keep-alive while its loop runs. Nothing when
//! systemd did not ask (no NOTIFY_SOCKET: run by hand, or started by the runtime itself).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends one notification; a failure is only logged: the plugin serves all the same, and
/// systemd acts on the notifications it misses (a start that never becomes READY fails).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({path}): {e}");
    }
}

/// How often to tell the watchdog the plugin lives: half its interval (WATCHDOG_USEC), when
/// systemd set one for this very process.
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ok = std::env::var("WATCHDOG_PID")
        .map(|pid| pid == std::process::id().to_string())
        .unwrap_or(true);
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec / 2))
}
