//! The vocabulary every layer speaks: a channel, where it stands, who owns it, how long it
//! lives, who asked for it, where it is attached and what it changed. Plain data: nothing here
//! does I/O, and nothing here imports the layers above it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{ChannelSpec, RootOwner};

/// One channel: what was asked for, who owns it and which units carry it. The same value is
/// recorded, listed, shown and reported by gc. Records are read as
/// [`crate::record::Record`]'s flat fields, so a channel is only ever written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    /// Random, made at create: what the cleanup unit, delete and gc check before they remove
    /// anything, so that they act on this channel and never on a later one at the same path.
    pub id: String,
    #[serde(flatten)]
    pub spec: ChannelSpec,
    /// The unit the channel is bound to; absent for an unbound channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The pod sandbox the NRI plugin made the channel for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub unit: String,
    /// The unit whose stop removes the directory; none where PID 1 removes it itself (under
    /// /run: the mount's `RuntimeDirectory=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_unit: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub lifetime: Lifetime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_owner: Option<RootOwner>,
}

/// Where a channel stands: systemd's active state of its mount unit, or what hostchan knows
/// beyond it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    Active,
    Activating,
    Deactivating,
    Reloading,
    Inactive,
    Failed,
    /// An active state this hostchan does not know by name.
    Other(String),
    /// systemd no longer has the unit: a leftover of a crash or reboot.
    Gone,
    /// `delete` just removed it.
    Deleted,
}

impl Channel {
    /// Its units: the mount, then the cleanup unit if it has one.
    pub fn units(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.unit.as_str()).chain(self.cleanup_unit.as_deref())
    }
}

impl ChannelState {
    pub fn of_unit(active_state: &str) -> ChannelState {
        match active_state {
            "active" => ChannelState::Active,
            "activating" => ChannelState::Activating,
            "deactivating" => ChannelState::Deactivating,
            "reloading" => ChannelState::Reloading,
            "inactive" => ChannelState::Inactive,
            "failed" => ChannelState::Failed,
            other => ChannelState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ChannelState::Active => "active",
            ChannelState::Activating => "activating",
            ChannelState::Deactivating => "deactivating",
            ChannelState::Reloading => "reloading",
            ChannelState::Inactive => "inactive",
            ChannelState::Failed => "failed",
            ChannelState::Other(state) => state,
            ChannelState::Gone => "gone",
            ChannelState::Deleted => "deleted",
        }
    }
}

impl fmt::Display for ChannelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChannelState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Who a channel lives with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "unit")]
pub enum Owner {
    /// Bound to a unit (normally the container's `.scope`): it goes when the unit stops.
    Unit(String),
    /// Lives until `hostchan delete`.
    Unbound,
}

impl Owner {
    pub fn unit(&self) -> Option<&str> {
        match self {
            Owner::Unit(unit) => Some(unit),
            Owner::Unbound => None,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Unit(unit) => f.write_str(unit),
            Owner::Unbound => f.write_str("unbound"),
        }
    }
}

/// How long a channel lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lifetime {
    /// With its owner unit: the container's stop (or `hostchan delete`).
    Stop,
    /// With the container: through its stops and starts, until `hostchan delete --container`
    /// (or the idle limit).
    Delete,
    /// With the pod: bound to its sandbox's unit, through its containers' restarts. Only the NRI
    /// plugin, which knows the pod, makes these.
    #[value(skip)]
    Pod,
    /// With one container of a pod: bound to the pod's unit until the container has its own,
    /// then to that (its binder). Only the NRI plugin makes these.
    #[value(skip)]
    Container,
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lifetime::Stop => "stop",
            Lifetime::Delete => "delete",
            Lifetime::Pod => "pod",
            Lifetime::Container => "container",
        })
    }
}

/// Where a request for a channel comes from: a person or engine on the command line (trusted with any path the
/// configuration allows), or a container's annotations (confined to the hook's roots, and there
/// to the tenant's own subtree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskedBy {
    Cli,
    Annotations(Tenant),
}

/// Whose annotations they are: a pod's namespace (on Kubernetes, where pod authors of one
/// namespace share it), or one container where there is no pod. The name is one plain path
/// component, checked where the tenant is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    Namespace(String),
    Container(String),
}

impl Tenant {
    /// The directory below a root that is the tenant's own.
    pub fn subtree_name(&self) -> &str {
        match self {
            Tenant::Namespace(name) | Tenant::Container(name) => name,
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenant::Namespace(name) => write!(f, "pod namespace {name}"),
            Tenant::Container(name) => write!(f, "container {name}"),
        }
    }
}

/// A memory limit hostchan raised so that the container's writes into the channel fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryChange {
    pub unit: String,
    pub property: String,
    pub from: u64,
    pub to: u64,
}

/// Where a channel is attached, as the record keeps it for `delete`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attached {
    pub pid: i32,
    /// When that process started (clock ticks since boot, /proc/<pid>/stat): with the pid, it
    /// names one process for good, where a pid, and even a namespace's inode number, can be
    /// used again once the container is gone.
    #[serde(default)]
    pub start_time: u64,
    /// Device and inode of the container's mount namespace.
    pub mount_ns_dev: u64,
    pub mount_ns_ino: u64,
    /// The kernel's id of the mount hostchan attached there: detaching acts on that mount
    /// wherever it is now, never on whatever sits at the container path. Absent in records of
    /// hostchans before 0.1 that did not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<u64>,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::Access;
    use crate::unit_name;

    pub(crate) fn channel(host_path: &str, owner: Option<&str>) -> Channel {
        let unit = unit_name::mount_unit_name(Path::new(host_path));
        Channel {
            id: "0123456789abcdef0123456789abcdef".into(),
            spec: ChannelSpec {
                host_path: host_path.into(),
                container_path: "/chan".into(),
                access: Access::Rw,
                size: 1 << 20,
            },
            owner: owner.map(str::to_owned),
            container: Some("c0ffee".into()),
            pod: None,
            cleanup_unit: Some(unit_name::cleanup_unit_name(&unit)),
            unit,
            created: 1_700_000_000,
            lifetime: Lifetime::Stop,
            root_owner: None,
        }
    }

    #[test]
    fn states_from_systemd_and_beyond() {
        for word in [
            "active",
            "activating",
            "deactivating",
            "reloading",
            "inactive",
            "failed",
            "maintenance",
        ] {
            assert_eq!(ChannelState::of_unit(word).as_str(), word);
        }
        assert_eq!(ChannelState::of_unit("active"), ChannelState::Active);
        assert_eq!(serde_json::to_value(ChannelState::Gone).unwrap(), "gone");
        assert_eq!(ChannelState::Deleted.to_string(), "deleted");
    }
}
