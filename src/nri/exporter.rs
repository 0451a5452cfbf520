//! The plugin's metrics for Prometheus, where the operator asks for them (`hostchan nri
//! --metrics-listen`, `--metrics-textfile`): served over HTTP on a unix socket or a TCP
//! address (`/metrics`, and `/healthz`, 200 only while the plugin is registered and
//! synchronized), and/or written for node_exporter's textfile collector. What is served is
//! `hostchan metrics` (the node's channels) and the plugin's own counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::Handler;
use crate::error::{Context, Error, Result};

/// Where `/metrics` and `/healthz` are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:/run/hostchan/metrics.sock`: a socket only root can connect to (0600).
    Unix(PathBuf),
    /// `127.0.0.1:9464`.
    Tcp(SocketAddr),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    "metrics address",
                    text,
                    "a unix socket's path must be absolute (unix:/run/hostchan/metrics.sock)",
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        text.parse().map(Address::Tcp).map_err(|_| {
            Error::invalid(
                "metrics address",
                text,
                "must be unix:PATH or IP:PORT (127.0.0.1:9464)",
            )
        })
    }
}

/// How often the textfile is written.
const TEXTFILE_EVERY: Duration = Duration::from_secs(15);
/// A scraper that does not send its request in this time is dropped.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);
/// Requests longer than this are not HTTP requests a scraper sends.
const MAX_REQUEST: usize = 8192;

/// Where the plugin listens for scrapers, bound before it asks the runtime for anything, so that
/// an address it cannot use fails its start.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds `address`. A unix socket's directory must be one only root can change (else another
/// user could swap what is at the path between the checks and the bind); the socket is made
/// 0600 by the bind itself, from the directory's descriptor, and a socket an earlier run left
/// there is removed first.
pub async fn listen(address: &Address) -> Result<Listener> {
    match address {
        Address::Tcp(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for metrics on {at}"))?;
            tracing::info!("serving metrics on http://{at}/metrics");
            Ok(Listener::Tcp(listener))
        }
        Address::Unix(path) => {
            let cannot = |e: std::io::Error| {
                Error::runtime(format!(
                    "cannot listen for metrics on {}: {e}",
                    path.display()
                ))
            };
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(Error::invalid(
                    "metrics address",
                    path.display().to_string(),
                    "must name a socket in a directory",
                ));
            };
            let dir = crate::hostfs::open_dir_only_root_changes(parent)?;
            remove_stale_socket(&dir, name, path)?;
            // bind() takes a path: the directory's descriptor's, so that it is the directory
            // checked. The umask is process-wide: nothing else runs yet at the plugin's start,
            // and everything it makes later sets its own mode.
            let at = Path::new("/proc/self/fd")
                .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
                .join(name);
            let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
            let bound = tokio::net::UnixListener::bind(&at);
            rustix::process::umask(umask);
            let listener = bound.map_err(cannot)?;
            tracing::info!("serving metrics on unix:{} (/metrics)", path.display());
            Ok(Listener::Unix(listener))
        }
    }
}

/// Answers each connection to `listener`, until the process ends.
pub async fn serve(listener: Listener, handler: Arc<Handler>) {
    loop {
        match &listener {
            Listener::Tcp(listener) => {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(answer(stream, handler.clone()));
                }
            }
            Listener::Unix(listener) => {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(answer(stream, handler.clone()));
                }
            }
        }
    }
}

/// A socket left by an earlier run is removed; anything else at the name is not touched.
fn remove_stale_socket(
    dir: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    path: &Path,
) -> Result<()> {
    use rustix::fs::{statat, unlinkat, AtFlags, FileType};
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Socket => {
            unlinkat(dir, name, AtFlags::empty()).map_err(|e| {
                Error::io(
                    format!("cannot remove the old socket {}", path.display()),
                    e,
                )
            })
        }
        Ok(_) => Err(Error::invalid(
            "metrics address",
            path.display().to_string(),
            "is something other than a socket; choose another path",
        )),
        Err(_) => Ok(()),
    }
}

/// One HTTP/1.x exchange: `GET /metrics` or `GET /healthz`, then the connection is closed.
async fn answer<S>(mut stream: S, handler: Arc<Handler>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let read = tokio::time::timeout(REQUEST_WITHIN, async {
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        true
    })
    .await;
    if read != Ok(true) {
        return;
    }
    let line = String::from_utf8_lossy(request.split(|b| *b == b'\n').next().unwrap_or_default())
        .into_owned();
    let mut words = line.split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            let handler = handler.clone();
            match tokio::task::spawn_blocking(move || handler.metrics_text()).await {
                Ok(Ok(text)) => ("200 OK", text),
                Ok(Err(e)) => ("500 Internal Server Error", format!("{e}\n")),
                Err(e) => ("500 Internal Server Error", format!("{e}\n")),
            }
        }
        (Some("GET"), Some("/healthz")) => {
            if handler.stats.serving.load(Ordering::Relaxed) {
                ("200 OK", "ok\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    "not registered with the runtime and synchronized\n".to_owned(),
                )
            }
        }
        (Some("GET"), _) => ("404 Not Found", "/metrics or /healthz\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Writes the metrics to `path` every [`TEXTFILE_EVERY`], as node_exporter's textfile collector
/// wants: whole or not at all (a new file renamed over the old).
pub async fn write_textfile(path: PathBuf, handler: Arc<Handler>) {
    let mut said = false;
    loop {
        let handler = handler.clone();
        let at = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let text = handler.metrics_text()?;
            replace_file(&at, text.as_bytes())
        })
        .await
        .unwrap_or_else(|e| Err(Error::runtime(e.to_string())));
        match written {
            Ok(()) => said = false,
            Err(e) if !said => {
                tracing::warn!("cannot write the metrics to {}: {e}", path.display());
                said = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(TEXTFILE_EVERY).await;
    }
}

/// `path`'s new contents, through a new file beside it renamed over it. The directory may be
/// another user's (node_exporter's): the new file is made exclusively, never through a symlink,
/// from the directory's descriptor, and the rename replaces whatever entry is there.
fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    use rustix::fs::{openat, renameat, unlinkat, AtFlags, Mode, OFlags};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::invalid(
            "metrics textfile",
            path.display().to_string(),
            "must name a file in a directory",
        ));
    };
    let dir = crate::hostfs::open_dir_nofollow(dir)
        .map_err(|e| Error::io(format!("cannot open {}", dir.display()), e))?;
    let staged = format!(".{}.{}", name.to_string_lossy(), std::process::id());
    let _ = unlinkat(&dir, staged.as_str(), AtFlags::empty());
    let fd = openat(
        &dir,
        staged.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(file);
    renameat(&dir, staged.as_str(), &dir, name)
        .map_err(|e| Error::io(format!("cannot replace {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:/run/m.sock").unwrap(),
            Address::Unix("/run/m.sock".into())
        );
        assert_eq!(
            Address::parse("127.0.0.1:9464").unwrap(),
            Address::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        for bad in ["unix:m.sock", "localhost", "9464", ""] {
            assert_eq!(Address::parse(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_never_through_a_link() {
        let scratch = crate::test_scratch::Scratch::new("textfile");
        let target = scratch.write("elsewhere", "not ours");
        // A link planted where the new file is staged, and another at the file's own name.
        scratch.symlink(&target, &format!(".hostchan.prom.{}", std::process::id()));
        scratch.symlink(&target, "hostchan.prom");
        replace_file(&scratch.0.join("hostchan.prom"), b"m 1\n").unwrap();
        assert_eq!(scratch.read("elsewhere"), "not ours");
        // Read without following a link: it is the new file, not a link.
        assert_eq!(scratch.read("hostchan.prom"), "m 1\n");
    }

    /// The socket is bound in a directory only root can change, 0600 from the start; an old
    /// socket goes, anything else at the name stays; a directory others can write, or one
    /// reached through a symlink, is refused.
    #[test]
    fn the_socket_is_bound_only_where_no_one_else_can_swap_it() {
        let scratch = crate::test_scratch::Scratch::new("metrics-socket");
        let dir = scratch.make_dirs("run");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listen = |path: &Path| runtime.block_on(listen(&Address::Unix(path.to_owned())));
        let socket = dir.join("m.sock");
        let first = listen(&socket).unwrap();
        let mode = |path: &Path| {
            let stat = rustix::fs::lstat(path).unwrap();
            (
                rustix::fs::FileType::from_raw_mode(stat.st_mode),
                stat.st_mode & 0o777,
            )
        };
        assert_eq!(mode(&socket), (rustix::fs::FileType::Socket, 0o600));
        drop(first);
        // Left by the earlier run: replaced.
        let again = listen(&socket).unwrap();
        assert_eq!(mode(&socket), (rustix::fs::FileType::Socket, 0o600));
        drop(again);

        scratch.write("run/file", "kept");
        let refused = listen(&dir.join("file")).err().unwrap().to_string();
        assert!(
            refused.contains("something other than a socket"),
            "{refused}"
        );
        assert_eq!(scratch.read("run/file"), "kept");

        let open = scratch.make_dirs("open");
        let fd = crate::hostfs::open_dir_nofollow(&open).unwrap();
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o777)).unwrap();
        let refused = listen(&open.join("m.sock")).err().unwrap().to_string();
        assert!(refused.contains("others can change it"), "{refused}");

        scratch.symlink(&dir, "link");
        assert!(listen(&scratch.0.join("link/m2.sock")).is_err());
        assert_eq!(scratch.count_entries("run"), 2);
    }
}
