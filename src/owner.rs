//! Who a channel lives with: the owner type, the one resolver the CLI and the OCI hook share,
//! the cgroup parsing that finds a process's scope, and what hostchan checks and adjusts on the
//! owner unit (that it runs, and its memory limit).

use serde::Serialize;

use crate::config::{Config, DefaultOwner};
use crate::error::{Error, Result};
use crate::systemd::Systemd;

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

/// What the caller said about the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerRequest {
    /// `--scope UNIT`.
    Unit(String),
    /// `--unbound`.
    Unbound,
    /// `--pid PID`, or the container's pid in the OCI state.
    Pid(i32),
    /// Nothing: the configuration decides.
    Default,
}

/// What to do with a pid that is in no scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoScope {
    Refuse,
    Unbound,
}

/// The one place that turns what the caller said into an owner.
pub fn resolve(request: &OwnerRequest, config: &Config, no_scope: NoScope) -> Result<Owner> {
    match request {
        OwnerRequest::Unit(unit) => Ok(Owner::Unit(validate_owner_unit(unit)?)),
        OwnerRequest::Unbound => Ok(Owner::Unbound),
        OwnerRequest::Pid(pid) => match (owner_of_pid(*pid)?, no_scope) {
            (Some(scope), _) => Ok(Owner::Unit(scope)),
            (None, NoScope::Unbound) => Ok(Owner::Unbound),
            (None, NoScope::Refuse) => Err(Error::owner(format!(
                "pid {pid} is not in a systemd scope; pass --unbound for a channel that lives until hostchan delete"
            ))),
        },
        OwnerRequest::Default => match config.owner.default {
            DefaultOwner::Unbound => Ok(Owner::Unbound),
            DefaultOwner::Require => Err(Error::usage(
                "no owner given: pass --scope UNIT, --pid PID or --unbound (or set owner.default = \"unbound\" in the configuration)",
            )),
        },
    }
}

/// Checks a unit name given as owner: systemd's characters and a type suffix (`x.scope`).
pub fn validate_owner_unit(name: &str) -> Result<String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    let has_type = name
        .rsplit_once('.')
        .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty());
    if name.len() >= 256 || !valid_chars || !has_type {
        return Err(Error::invalid(
            "scope",
            name,
            "is not a unit name; give the container's unit, e.g. libpod-<id>.scope",
        ));
    }
    Ok(name.to_owned())
}

/// The scope a container's process lives in, for `create --pid`.
pub fn owner_of_pid(pid: i32) -> Result<Option<String>> {
    // PID 1's own scope is no container's.
    Ok(scope_of_pid(pid)?.filter(|scope| scope != "init.scope"))
}

/// The systemd scope a process lives in, from /proc/<pid>/cgroup: the `name=systemd` line on
/// cgroup v1 and hybrid hosts, the `0::` line on v2; the innermost `.scope` on the path.
pub fn scope_of_pid(pid: i32) -> Result<Option<String>> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::owner(format!(
            "cannot read {path} to find the scope of pid {pid}: {e}"
        ))
    })?;
    Ok(scope_in_cgroup_file(&text))
}

pub fn scope_in_cgroup_file(text: &str) -> Option<String> {
    let cgroup_path = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let path = text
        .lines()
        .find_map(|line| line.split_once(":name=systemd:").map(|(_, p)| p.to_owned()))
        .or_else(|| cgroup_path("0::"))?;
    path.rsplit('/')
        .find(|component| component.ends_with(".scope"))
        .map(str::to_owned)
}

pub fn check_owner_active(systemd: &Systemd, owner: &str) -> Result<()> {
    let states = systemd.unit_states(&[owner])?;
    match states.get(owner) {
        Some(status) if status.exists() && status.active_state == "active" => Ok(()),
        Some(status) if status.exists() => Err(Error::owner(format!(
            "owner unit {owner} is {} ({}); a channel can only be bound to a running unit",
            status.active_state, status.sub_state
        ))),
        _ => Err(Error::owner(format!(
            "owner unit {owner} does not exist; give the container's running scope (systemctl list-units --type=scope) or --unbound"
        ))),
    }
}

/// A memory limit hostchan raised so that the container's writes into the channel fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryChange {
    pub unit: String,
    pub property: &'static str,
    pub from: u64,
    pub to: u64,
}

/// The container's own writes into the channel count against its memory limit (tmpfs pages
/// are charged to the writer): raise the limit by the channel's size when asked, and warn when
/// the limit leaves no room for a full channel.
pub fn memory_headroom(
    systemd: &Systemd,
    owner: &str,
    size: u64,
    grow: bool,
) -> Result<Option<MemoryChange>> {
    let memory = match systemd.memory(owner) {
        Ok(memory) => memory,
        Err(e) if grow => return Err(e),
        Err(_) => return Ok(None),
    };
    let (property, limit) = match (memory.max, memory.limit) {
        (max, _) if max != u64::MAX => ("MemoryMax", max),
        (_, limit) if limit != u64::MAX => ("MemoryLimit", limit),
        _ => return Ok(None),
    };
    if grow {
        let raised = limit.saturating_add(size);
        systemd.set_memory_limit(owner, property, raised)?;
        tracing::info!("raised {property} of {owner} from {limit} to {raised} bytes");
        return Ok(Some(MemoryChange {
            unit: owner.to_owned(),
            property,
            from: limit,
            to: raised,
        }));
    }
    let current = if memory.current == u64::MAX {
        0
    } else {
        memory.current
    };
    if limit < current.saturating_add(size) {
        tracing::warn!(
            "{owner} can be OOM-killed by writing into this channel: its {property} is {limit} bytes, below its usage ({current}) plus the channel's size ({size}); use --grow-memory-limit or raise it"
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_cgroup_files() {
        let hybrid = "12:memory:/system.slice/runc-ctr1.scope\n1:name=systemd:/system.slice/runc-ctr1.scope\n0::/system.slice/runc-ctr1.scope\n";
        assert_eq!(
            scope_in_cgroup_file(hybrid).as_deref(),
            Some("runc-ctr1.scope")
        );
        let v2 = "0::/machine.slice/libpod-4f2a.scope/container\n";
        assert_eq!(
            scope_in_cgroup_file(v2).as_deref(),
            Some("libpod-4f2a.scope")
        );
        let service = "0::/system.slice/sshd.service\n";
        assert_eq!(scope_in_cgroup_file(service), None);
        let v1_named_first = "1:name=systemd:/user.slice/user-0.slice/session-3.scope\n0::/\n";
        assert_eq!(
            scope_in_cgroup_file(v1_named_first).as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(scope_in_cgroup_file(""), None);
    }

    #[test]
    fn owner_unit_checks() {
        assert!(validate_owner_unit("libpod-4f2a.scope").is_ok());
        assert!(validate_owner_unit("runc-c\\x2d1.scope").is_ok());
        for bad in ["", "ctr1", ".scope", "a b.scope", "a/b.scope", "x.scope\n"] {
            let err = validate_owner_unit(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
