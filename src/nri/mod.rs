//! `hostchan nri`: an NRI plugin (Node Resource Interface: containerd 1.7+, CRI-O 1.26+). The
//! runtime shows it every pod and container; at CreateContainer it makes the channels the pod's
//! annotations ask for and has the runtime bind-mount them into the container, so no namespace
//! injection is needed; at the container's or pod's end, and at every (re)connection, it takes
//! them down. The channels are systemd's units, as `create` makes them: the lifecycle holds
//! while the plugin or the runtime is down.
//!
//! The wire is containerd's: ttrpc (its own Rust crate, async API, one thread) over NRI's
//! connection multiplexer ([`mux`]), with code generated from NRI's api.proto ([`api`]).

mod exporter;
mod handler;
mod mux;
mod notify;
mod plugin;
mod stats;

pub use exporter::Address as MetricsAddress;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::error::{Context, Error, Result};
use handler::Handler;

/// Where containerd and CRI-O listen for plugins.
pub const DEFAULT_SOCKET: &str = "/var/run/nri/nri.sock";
/// Set by a runtime that started the plugin itself (from /opt/nri/plugins): the number of the
/// socket it passed, already connected.
const SOCKET_FD_ENV: &str = "NRI_PLUGIN_SOCKET";
/// How long the runtime has to accept the registration.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two tries to reach a runtime that is not there (yet, or again).
const RECONNECT_AT_MOST: Duration = Duration::from_secs(5);
/// How long the plugin may be without the runtime before it gives up and exits, so that the
/// unit does not stay active while no pod's channels are looked after (systemd's Restart=
/// brings it back, and the journal says why).
const NOT_SERVING_AT_MOST: Duration = Duration::from_secs(60);

/// How the plugin connects and answers (`hostchan nri`'s arguments, cli::NriArgs).
#[derive(Debug, Clone)]
pub struct NriArgs {
    /// The runtime's NRI socket, unless the runtime started the plugin (NRI_PLUGIN_SOCKET).
    pub socket: PathBuf,
    pub name: String,
    /// Two digits: the runtime calls plugins in ascending order.
    pub index: String,
    /// The runtime's request timeout in milliseconds, unless it says its own at Configure.
    pub request_timeout: u64,
    /// Where to serve `/metrics` and `/healthz`.
    pub metrics_listen: Option<MetricsAddress>,
    /// Where to write the metrics for node_exporter's textfile collector.
    pub metrics_textfile: Option<PathBuf>,
}

/// Runs the plugin until it is stopped: connects, registers, serves, and connects again when
/// the runtime goes away (a restart of containerd). A plugin the runtime started ends with its
/// connection instead, as the runtime expects.
pub fn run(
    args: &NriArgs,
    hostchan_binary: &Path,
    config_path: &Path,
    config_named: bool,
) -> Result<()> {
    check_index(&args.index)?;
    let handler = Arc::new(Handler {
        hostchan_binary: hostchan_binary.to_owned(),
        config_path: config_path.to_owned(),
        config_named,
        stats: stats::Stats::default(),
    });
    handler
        .stats
        .set_request_timeout(Duration::from_millis(args.request_timeout));
    // Work that outlives its request (a create answered once queued, waiting out PID 1's
    // mount rate limit; a teardown past the deadline) holds a thread until systemd answers:
    // enough of them for a node's worth of pods started at once, so that no request waits for
    // a thread (they are idle in a wait, and exit 10 s after their last work).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(256)
        .build()
        .context("cannot start the NRI plugin's runtime")?;
    runtime.block_on(async {
        if let Some(address) = &args.metrics_listen {
            let listener = exporter::listen(address).await?;
            tokio::spawn(exporter::serve(listener, handler.clone()));
        }
        if let Some(path) = &args.metrics_textfile {
            tokio::spawn(exporter::write_textfile(path.clone(), handler.clone()));
        }
        if let Some(every) = notify::watchdog_interval() {
            tokio::spawn(async move {
                loop {
                    notify::notify("WATCHDOG=1");
                    tokio::time::sleep(every).await;
                }
            });
        }
        if let Some(fd) = std::env::var_os(SOCKET_FD_ENV) {
            let fd = fd.to_string_lossy().parse::<RawFd>().map_err(|_| {
                Error::usage(format!("{SOCKET_FD_ENV}={fd:?} is not a file descriptor number"))
            })?;
            let stream = UnixStream::from_std(socket_from_runtime(fd)?)
                .context("cannot use the socket the runtime passed")?;
            return plugin::serve(stream, args, handler).await.ended;
        }
        let mut wait = Duration::from_millis(250);
        let mut said_waiting = false;
        let mut not_serving_since = std::time::Instant::now();
        let mut last_failure: String;
        loop {
            match UnixStream::connect(&args.socket).await {
                Ok(stream) => {
                    said_waiting = false;
                    wait = Duration::from_millis(250);
                    let served = plugin::serve(stream, args, handler.clone()).await;
                    if served.synchronized {
                        not_serving_since = std::time::Instant::now();
                    }
                    last_failure = match served.ended {
                        Ok(()) => "the runtime closed the NRI connection".to_owned(),
                        Err(e) => format!("NRI connection failed: {e}"),
                    };
                    tracing::warn!("{last_failure}; connecting again");
                    notify::notify(&format!("STATUS=not serving: {last_failure}; reconnecting"));
                }
                Err(e) => {
                    last_failure = format!(
                        "cannot connect to the runtime's NRI socket {}: {e}",
                        args.socket.display()
                    );
                    if !said_waiting {
                        tracing::warn!(
                            "{last_failure}; trying again until it is there (is NRI enabled in the runtime's configuration?)"
                        );
                        said_waiting = true;
                    }
                }
            }
            if not_serving_since.elapsed() > NOT_SERVING_AT_MOST {
                return Err(Error::runtime(format!(
                    "not serving the runtime for {} s ({last_failure}): exiting, so that the unit does not stay active while containerd creates containers without this plugin",
                    NOT_SERVING_AT_MOST.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_AT_MOST);
        }
    })
}

/// NRI's plugin index: two digits.
fn check_index(index: &str) -> Result<()> {
    if index.len() == 2 && index.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "plugin index",
            index,
            "must be two digits (00 to 99)",
        ))
    }
}

/// Takes over the connected socket the runtime passed by number, after checking that it is one.
#[allow(unsafe_code)]
fn socket_from_runtime(fd: RawFd) -> Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd < 3 {
        return Err(Error::usage(format!(
            "{SOCKET_FD_ENV}={fd} names a standard stream, not the runtime's socket"
        )));
    }
    // SAFETY: the descriptor is only borrowed for fstat, which fails cleanly (EBADF) if it is
    // not open; it is taken over only once it is known to be an open socket, which nothing else
    // in this process uses: the runtime passed it for the plugin alone.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed).map_err(|e| {
        Error::usage(format!(
            "{SOCKET_FD_ENV}={fd} is not an open file descriptor: {e}"
        ))
    })?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(Error::usage(format!(
            "{SOCKET_FD_ENV}={fd} is not a socket"
        )));
    }
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)
        .context("cannot set close-on-exec on the runtime's socket")?;
    // SAFETY: as above: open, a socket, and owned by nothing else in this process.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = std::os::unix::net::UnixStream::from(owned);
    stream
        .set_nonblocking(true)
        .context("cannot use the runtime's socket")?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_two_digits() {
        assert!(check_index("10").is_ok());
        assert!(check_index("00").is_ok());
        for bad in ["1", "100", "ab", ""] {
            assert_eq!(check_index(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
