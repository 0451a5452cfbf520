//! Logging: to the journal when it is there (so `journalctl -u <channel unit>` shows hostchan's
//! lines through OBJECT_SYSTEMD_UNIT), and warnings to stderr; more with -v or RUST_LOG.

use std::io::IsTerminal;
use std::path::Path;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The target of the one line a failing command logs: the journal gets it, stderr already has
/// it from `main`.
pub const FAILURE: &str = "hostchan::failure";

pub fn init(verbosity: u8) {
    let stderr_level = match verbosity {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    // zbus's own warnings (a match rule it could not remove from a bus that went away) say
    // nothing an operator can act on; hostchan reports the failure itself.
    let stderr_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::default()
            .add_directive(stderr_level.into())
            .add_directive(
                format!("{FAILURE}=off")
                    .parse()
                    .unwrap_or_else(|_| LevelFilter::ERROR.into()),
            )
            .add_directive(
                "zbus=error"
                    .parse()
                    .unwrap_or_else(|_| LevelFilter::ERROR.into()),
            ),
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_filter(stderr_filter);

    let journal = Path::new(JOURNAL_SOCKET)
        .exists()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|layer| {
            layer
                .with_field_prefix(None)
                .with_syslog_identifier("hostchan".to_owned())
                .with_filter(LevelFilter::INFO.max(stderr_level))
        });

    // Under a unit whose stderr is the journal (hostchan-nri, hostchan-gc) each line would be
    // there twice: once with its fields, once as plain text.
    let stderr = (journal.is_none() || !stderr_is_the_journal()).then_some(stderr);

    // A second init (tests, or a library user who set up logging) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(journal)
        .try_init();
}

/// systemd sets JOURNAL_STREAM to the device and inode of the stream it connects a service's
/// stdout and stderr to (systemd.exec(5)).
fn stderr_is_the_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stream == format!("{}:{}", stderr.st_dev, stderr.st_ino)
}
