//! The keeper: the unit hostchan keeps for a container's `delete`-lifetime channels.

use super::Channels;
use crate::error::{Kind, Result};
use crate::inject;
use crate::model::Lifetime;
use crate::record::Record;
use crate::systemd::SystemdOps;
use crate::unit_name;
use crate::units;

impl Channels {
    /// Stops the unit that keeps a container's `delete`-lifetime channels once it keeps none.
    pub(super) fn stop_keeper_if_unused(&self, container: &str) -> Result<()> {
        let holds_more = self.store.all()?.iter().any(|r| {
            r.channel.container.as_deref() == Some(container)
                && r.channel.lifetime == Lifetime::Delete
        });
        if !holds_more {
            self.systemd()?
                .stop(&unit_name::keeper_unit_name(container))?;
        }
        Ok(())
    }
}

/// A `delete`-lifetime channel whose container has been neither started nor stopped within the
/// channel's idle limit, and does not run now.
pub(super) fn is_idle(record: &Record, now: u64) -> bool {
    record.channel.lifetime == Lifetime::Delete
        && record.idle_limit > 0
        && now.saturating_sub(record.last_seen) > record.idle_limit
        && !record
            .attached
            .as_ref()
            .is_some_and(inject::attached_container_runs)
}

/// Starts the unit that holds a container's `delete`-lifetime channels, unless it runs already
/// (another channel of the container, or a create racing this one, started it).
pub(super) fn ensure_keeper(systemd: &dyn SystemdOps, keeper: &str, container: &str) -> Result<()> {
    if systemd.is_active(keeper)? {
        return Ok(());
    }
    match systemd.start_transient(&units::keeper_unit(keeper, container), &[]) {
        Ok(outcome) if outcome.succeeded() => Ok(()),
        Ok(outcome) => Err(outcome.error("start", None)),
        Err(e) if e.kind() == Kind::AlreadyExists && systemd.is_active(keeper)? => Ok(()),
        Err(e) => Err(e),
    }
}
