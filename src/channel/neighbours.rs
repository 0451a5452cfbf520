//! A new channel against the others on the node, with every record in hand: no channel inside,
//! over or at another's path, the parents other channels made that it shares, and the node's
//! budget for all of them together.

use std::path::Path;

use crate::config::{Config, MaxSize};
use crate::error::{Error, Result};
use crate::hostfs::MadeDir;
use crate::record::Record;
use crate::spec::{format_size, ChannelSpec};

/// Refuses a channel that would take the sum of the node's channels past
/// `node.max_total_size`. Checked with every record in hand under the records' write lock, so
/// that creates racing each other cannot overshoot it together.
pub(super) fn check_node_budget(
    config: &Config,
    spec: &ChannelSpec,
    records: &[Record],
) -> Result<()> {
    let budget = config.node.effective_max_total_size;
    let used: u64 = records.iter().map(|record| record.channel.spec.size).sum();
    if used.saturating_add(spec.size) <= budget {
        return Ok(());
    }
    let written = match config.node.max_total_size {
        MaxSize::Bytes(bytes) => format_size(bytes),
        percent => format!("{percent} ({})", format_size(budget)),
    };
    Err(Error::runtime(format!(
        "cannot create channel {} ({}): the node's channels would come to {}, over node.max_total_size = {written} in {}; {} channels use {}, {} is left; delete a channel or raise node.max_total_size",
        spec.host_path.display(),
        format_size(spec.size),
        format_size(used.saturating_add(spec.size)),
        config.origin(),
        records.len(),
        format_size(used),
        format_size(budget.saturating_sub(used)),
    )))
}

/// Refuses a host path that is, is inside, or holds another channel, and returns the
/// directories other channels' creation made above it: recorded with this channel too, so that
/// whichever channel goes last removes them (each goes only while empty).
pub(super) fn check_among_channels(
    host_path: &Path,
    unit: &str,
    records: &[Record],
) -> Result<Vec<MadeDir>> {
    let mut shared: Vec<MadeDir> = Vec::new();
    for record in records {
        // A racing create for the same path (or unit name) wrote its record since ours was
        // looked for.
        if host_path == record.host_path() || unit == record.unit() {
            return Err(record.refuses(host_path));
        }
        if record.host_path().starts_with(host_path) {
            return Err(Error::invalid(
                "host path",
                host_path.display().to_string(),
                format!(
                    "holds the channel {}, which a channel here would cover; choose another path",
                    record.host_path().display()
                ),
            ));
        }
        if host_path.starts_with(record.host_path()) {
            return Err(Error::invalid(
                "host path",
                host_path.display().to_string(),
                format!(
                    "is inside the channel {}; choose a path outside it",
                    record.host_path().display()
                ),
            ));
        }
        for made in &record.made {
            if made.path != record.host_path()
                && host_path.starts_with(&made.path)
                && !shared.contains(made)
            {
                shared.push(made.clone());
            }
        }
    }
    Ok(shared)
}
