//! The lifecycle of a channel, one file per operation behind the [`Channels`] facade: create,
//! delete, list and status, cleanup and gc, the keeper of `delete`-lifetime channels, and the
//! one teardown they share.

mod create;
mod delete;
mod gc;
mod keeper;
mod leftover;
mod list;
mod neighbours;
mod pods;
mod request;
mod teardown;

use std::path::PathBuf;

use serde::Serialize;

pub use create::Created;
pub use gc::{Cleanup, Gc, Leftover, LeftoverOutcome};
pub use pods::LivePods;
pub use request::{Ask, AttachTo, CreateOptions, Given};

use crate::error::{Error, Result};
use crate::hostfs;
use crate::model::{Channel, ChannelState, MemoryChange};
use crate::record::{Record, Store};
use crate::spec;
use crate::systemd::{Systemd, SystemdOps};
use crate::unit_name;

/// A channel as `list` and `status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    #[serde(flatten)]
    pub channel: Channel,
    /// Bytes in use; only known while the channel is mounted.
    pub used: Option<u64>,
    pub state: ChannelState,
    pub sub_state: String,
    /// Set by `create --grow-memory-limit` when it changed a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<MemoryChange>,
}

impl ChannelInfo {
    fn deleted(channel: Channel) -> ChannelInfo {
        ChannelInfo {
            used: None,
            state: ChannelState::Deleted,
            sub_state: String::new(),
            memory_limit: None,
            channel,
        }
    }

    /// A channel just made or found mounted.
    fn mounted(record: Record) -> ChannelInfo {
        ChannelInfo {
            used: hostfs::used_bytes(record.host_path()),
            state: ChannelState::Active,
            sub_state: "mounted".into(),
            memory_limit: record.memory_limit,
            channel: record.channel,
        }
    }
}

/// A channel named on the command line: by host path or by mount unit name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub unit: String,
    pub shown: String,
    /// The host path it was named by: the channel found must be at this very path (two paths
    /// can share a unit name once systemd shortens long names with a hash).
    pub path: Option<PathBuf>,
}

impl Target {
    pub fn of_unit(unit: &str) -> Target {
        Target {
            unit: unit.to_owned(),
            shown: unit.to_owned(),
            path: None,
        }
    }

    pub fn parse(text: &str) -> Result<Target> {
        if text.starts_with('/') {
            let path = spec::normalize_absolute("host path", text)?;
            return Ok(Target {
                unit: unit_name::mount_unit_name(&path),
                shown: path.display().to_string(),
                path: Some(path),
            });
        }
        if text.ends_with(".mount") && !text.contains('/') {
            return Ok(Target::of_unit(text));
        }
        Err(Error::invalid(
            "channel",
            text,
            "expected a host path (/run/...) or a .mount unit name",
        ))
    }
}

/// Every operation on channels, each in its own file:
///
/// | operation | file |
/// |---|---|
/// | `create`, `create_all`, `create_all_then` (check, record, directories, units, attach) | `create.rs` |
/// | a create request: `CreateOptions`, `Ask` | `request.rs` |
/// | `delete`, `delete_container`, `container_stopped` | `delete.rs` |
/// | the one teardown delete, rollback, expiry and the pods share | `teardown.rs` |
/// | `list`, `status` | `list.rs` |
/// | `cleanup` (the cleanup unit's), `gc` | `gc.rs` |
/// | what a record without a live channel is (`Standing`), and clearing it away | `leftover.rs` |
/// | the keeper unit of `delete`-lifetime channels | `keeper.rs` |
/// | pods through the NRI plugin: binders, `pod_container_gone`, `pod_gone`, `reconcile_pods` | `pods.rs` |
pub struct Channels {
    store: Store,
    hostchan_binary: PathBuf,
    /// One connection for everything this process does, made when first needed.
    systemd: std::cell::OnceCell<Box<dyn SystemdOps>>,
}

impl Channels {
    /// `hostchan_binary` is what the cleanup units run later.
    pub fn new(hostchan_binary: PathBuf) -> Channels {
        Channels {
            store: Store::default(),
            hostchan_binary,
            systemd: std::cell::OnceCell::new(),
        }
    }

    /// Channels over this store and this systemd (a double, in the unit tests).
    #[cfg(test)]
    pub(crate) fn with(
        store: Store,
        hostchan_binary: PathBuf,
        systemd: Box<dyn SystemdOps>,
    ) -> Channels {
        let channels = Channels {
            store,
            hostchan_binary,
            systemd: std::cell::OnceCell::new(),
        };
        let _ = channels.systemd.set(systemd);
        channels
    }

    fn systemd(&self) -> Result<&dyn SystemdOps> {
        if self.systemd.get().is_none() {
            let _ = self.systemd.set(Box::new(Systemd::connect()?));
        }
        self.systemd
            .get()
            .map(|systemd| systemd.as_ref())
            .ok_or_else(|| Error::systemd("cannot connect to systemd"))
    }

    fn load(&self, target: &Target) -> Result<Record> {
        let record = self.store.load(&target.unit)?.ok_or_else(|| {
            Error::not_found(format!(
                "no channel at {}: hostchan has no record of {}; nothing was changed",
                target.shown, target.unit
            ))
        })?;
        match &target.path {
            Some(path) if path != record.host_path() => Err(Error::not_found(format!(
                "no channel at {}: its unit name {} is the channel at {}; nothing was changed",
                target.shown,
                target.unit,
                record.host_path().display()
            ))),
            _ => Ok(record),
        }
    }
}

fn seconds_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod double;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("/run//chan/c1/").unwrap(),
            Target {
                unit: "run-chan-c1.mount".into(),
                shown: "/run/chan/c1".into(),
                path: Some("/run/chan/c1".into()),
            }
        );
        assert_eq!(
            Target::parse("run-chan-c1.mount").unwrap().unit,
            "run-chan-c1.mount"
        );
        assert!(Target::parse("run-chan-c1.service").is_err());
        assert!(Target::parse("relative/x.mount").is_err());
        assert!(Target::parse("/a/../b").is_err());
    }
}
