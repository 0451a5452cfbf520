//! The keeper: the unit hostchan keeps for a container's `delete`-lifetime channels.

use super::Channels;
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::inject;
use crate::model::{Lifetime, Owner, Requester};
use crate::owner::{self, OwnerRequest};
use crate::record::Record;
use crate::systemd::Systemd;
use crate::unit_name;
use crate::units;

/// The owner for a lifetime: `stop` resolves what the caller said; `delete` is always the unit
/// hostchan keeps for the container (which needs the container's id, and no other owner).
pub(super) fn owner_for_lifetime(
    lifetime: Lifetime,
    container: Option<&str>,
    request: &OwnerRequest,
    config: &Config,
    requester: &Requester,
) -> Result<Owner> {
    match lifetime {
        Lifetime::Stop | Lifetime::Pod => owner::resolve(request, config, requester),
        Lifetime::Delete => {
            let Some(container) = container else {
                return Err(Error::usage(
                    "--lifetime delete needs the container's id (--container ID): the channel lives until hostchan delete --container ID",
                ));
            };
            if matches!(request, OwnerRequest::Unit(_) | OwnerRequest::Unbound) {
                return Err(Error::usage(
                    "--lifetime delete binds the channel to a unit hostchan keeps for the container; leave out --scope and --unbound",
                ));
            }
            // The owner policy holds for every lifetime: a container it would refuse a
            // stop-lifetime channel (no unit, or not an engine's) gets no keeper either.
            if let OwnerRequest::Pid(_) = request {
                owner::resolve(request, config, requester)?;
            }
            Ok(Owner::Unit(unit_name::keeper_unit_name(container)))
        }
    }
}

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
pub(super) fn ensure_keeper(systemd: &Systemd, keeper: &str, container: &str) -> Result<()> {
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
