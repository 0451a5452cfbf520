//! Who a channel lives with: the one resolver the CLI, the OCI hook and the NRI plugin share,
//! the cgroup parsing that finds a process's scope, and the check that the owner unit runs.

use crate::config::{Config, DefaultOwner};
use crate::error::{Error, Result};
use crate::model::{AskedBy, Lifetime, Owner};
use crate::systemd::{Memory, SystemdOps};

/// What the caller asked for as the owner, before it is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskedOwner {
    /// A unit named: `--scope UNIT`.
    Unit(String),
    /// The systemd cgroup path of the container's unit as its runtime gave it (the NRI
    /// plugin: the pod's `SLICE:PREFIX:NAME`, spelled out as `/a.slice/a-b.slice/PREFIX-NAME.scope`);
    /// decided by the same table as a process's cgroup path, with no look-up at systemd.
    CgroupPath(String),
    /// `--unbound`.
    Unbound,
    /// `--pid PID`, or the container's pid in the OCI state.
    Pid(i32),
    /// Nothing: the configuration decides.
    Default,
}

/// The owner policy, one decision table for the CLI and the OCI hook alike. For `--pid` (and
/// the hook, which has the container's pid), the innermost unit on the process's systemd
/// cgroup path decides:
///
/// | innermost unit                                              | decision                    |
/// |-------------------------------------------------------------|-----------------------------|
/// | `libpod-*`, `docker-*`, `crio-*`, `cri-containerd-*`,        | the container's owner       |
/// | `isulad-*`, `machine-*`, `runc-*`, `crun-*` `.scope`;         |                             |
/// | `systemd-nspawn@*.service`                                  |                             |
/// | `session-*.scope`, `user@*.service`, anything in `user.slice` | refused: a login or a user  |
/// | `init.scope`                                                | refused: PID 1's own        |
/// | any other unit                                              | refused: name it (--scope)  |
/// | none (the cgroupfs driver)                                  | no owner: `owner.default`   |
///
/// A unit named explicitly (`--scope`) is the owner if it is a unit name, is not one of the
/// refused kinds above, and (checked against systemd before anything is made) runs outside
/// `user.slice`.
pub const CONTAINER_UNIT_PREFIXES: &[&str] = &[
    "libpod-",
    "docker-",
    "crio-",
    "cri-containerd-",
    "isulad-",
    "machine-",
    "runc-",
    "crun-",
];

/// What the systemd cgroup path of a process says about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOwner {
    /// The process is in a container engine's unit.
    Container(String),
    /// The process is in a unit that is never a container's owner; the reason says which.
    Refused { unit: String, reason: &'static str },
    /// The path has no unit at all (a cgroupfs-driver container).
    NoUnit,
}

/// The decision table above, for one systemd cgroup path (`/machine.slice/libpod-x.scope/...`).
pub fn owner_of_cgroup(path: &str) -> PathOwner {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let innermost = components
        .iter()
        .rev()
        .find(|c| is_unit_with_processes(c))
        .copied();
    let Some(unit) = innermost else {
        return PathOwner::NoUnit;
    };
    match never_an_owner(unit) {
        Some(reason) => PathOwner::Refused {
            unit: unit.to_owned(),
            reason,
        },
        // Anywhere on the path: systemd itself may run in a container, below a prefix.
        None if components.contains(&"user.slice") => PathOwner::Refused {
            unit: unit.to_owned(),
            reason: "runs under user.slice, a user's own units",
        },
        None if is_container_unit(unit) => PathOwner::Container(unit.to_owned()),
        None => PathOwner::Refused {
            unit: unit.to_owned(),
            reason:
                "is not a container engine's unit; if it is the container's, name it with --scope",
        },
    }
}

/// Scopes and services hold processes; slices only group them.
fn is_unit_with_processes(component: &str) -> bool {
    component.ends_with(".scope") || component.ends_with(".service")
}

fn is_container_unit(unit: &str) -> bool {
    (unit.ends_with(".scope")
        && CONTAINER_UNIT_PREFIXES
            .iter()
            .any(|prefix| unit.starts_with(prefix)))
        || (unit.starts_with("systemd-nspawn@") && unit.ends_with(".service"))
}

/// Units that are never a container's owner, whoever names them.
fn never_an_owner(unit: &str) -> Option<&'static str> {
    if unit.starts_with("session-") && unit.ends_with(".scope") {
        Some("is a login session, which lives as long as someone stays logged in")
    } else if unit.starts_with("user@") && unit.ends_with(".service") {
        Some("is a user's service manager")
    } else if unit == "user.slice" || (unit.starts_with("user-") && unit.ends_with(".slice")) {
        Some("is a user's slice")
    } else if unit == "init.scope" {
        Some("is PID 1's own scope")
    } else if unit.ends_with(".slice") {
        Some("is a slice, which holds units rather than a container")
    } else {
        None
    }
}

/// For `--pid` whatever the owner: the process must be a container's. One in a login session,
/// a user's units or PID 1's scope is refused even when the owner is named or unbound.
pub fn check_container_process(pid: i32) -> Result<()> {
    let path = systemd_cgroup_of_pid(pid)?;
    if let PathOwner::Refused { unit, reason } = owner_of_cgroup(&path) {
        if never_an_owner(&unit).is_some() || path.split('/').any(|c| c == "user.slice") {
            return Err(Error::owner(format!(
                "pid {pid} is in {unit}, which {reason}; --pid attaches only inside a container"
            )));
        }
    }
    Ok(())
}

/// The one place that turns what the caller said into an owner. `asked_by`: who asked, so that
/// a refusal's hint suits them (flags for the CLI; the operator's settings for annotations,
/// whose author can change neither).
pub fn resolve(request: &AskedOwner, config: &Config, asked_by: &AskedBy) -> Result<Owner> {
    match request {
        AskedOwner::Unit(unit) => Ok(Owner::Unit(validate_owner_unit(unit)?)),
        AskedOwner::Unbound => Ok(Owner::Unbound),
        AskedOwner::Pid(pid) => {
            let path = systemd_cgroup_of_pid(*pid)?;
            match owner_of_cgroup(&path) {
                PathOwner::Container(unit) => Ok(Owner::Unit(unit)),
                PathOwner::Refused { unit, reason } => Err(Error::owner(format!(
                    "pid {pid} is in {unit}, which {reason}; give the pid of a container's process"
                ))),
                PathOwner::NoUnit => default_owner(config, asked_by).map_err(|_| {
                    Error::owner(match asked_by {
                        AskedBy::Cli => format!(
                            "pid {pid} is in no systemd unit (cgroup {path}; a cgroupfs-driver engine?); pass --unbound for a channel that lives until hostchan delete, or set owner.default = \"unbound\""
                        ),
                        AskedBy::Annotations(_) => format!(
                            "the container (pid {pid}) is in no systemd unit to bind its channels to (cgroup {path}; an engine on the cgroupfs driver?); {}",
                            unbound_hint(config)
                        ),
                    })
                }),
            }
        }
        AskedOwner::CgroupPath(path) => match owner_of_cgroup(path) {
            PathOwner::Container(unit) => Ok(Owner::Unit(unit)),
            PathOwner::Refused { unit, reason } => Err(Error::owner(format!(
                "the container's unit {unit} (cgroup {path}) {reason}; its runtime's cgroup parent must be a container slice"
            ))),
            PathOwner::NoUnit => default_owner(config, asked_by),
        },
        AskedOwner::Default => default_owner(config, asked_by),
    }
}

/// The owner for a lifetime: `stop` resolves what the caller said; `delete` is always the unit
/// hostchan keeps for the container (which needs the container's id, and no other owner).
pub fn for_lifetime(
    lifetime: Lifetime,
    container: Option<&str>,
    request: &AskedOwner,
    config: &Config,
    asked_by: &AskedBy,
) -> Result<Owner> {
    match lifetime {
        Lifetime::Stop | Lifetime::Pod | Lifetime::Container => resolve(request, config, asked_by),
        Lifetime::Delete => {
            let Some(container) = container else {
                return Err(Error::usage(
                    "--lifetime delete needs the container's id (--container ID): the channel lives until hostchan delete --container ID",
                ));
            };
            if matches!(request, AskedOwner::Unit(_) | AskedOwner::Unbound) {
                return Err(Error::usage(
                    "--lifetime delete binds the channel to a unit hostchan keeps for the container; leave out --scope and --unbound",
                ));
            }
            // The owner policy holds for every lifetime: a container it would refuse a
            // stop-lifetime channel (no unit, or not an engine's) gets no keeper either.
            if let AskedOwner::Pid(_) | AskedOwner::CgroupPath(_) = request {
                resolve(request, config, asked_by)?;
            }
            Ok(Owner::Unit(crate::unit_name::keeper_unit_name(container)))
        }
    }
}

fn default_owner(config: &Config, asked_by: &AskedBy) -> Result<Owner> {
    match (config.owner.default, asked_by) {
        (DefaultOwner::Unbound, _) => Ok(Owner::Unbound),
        (DefaultOwner::Require, AskedBy::Cli) => Err(Error::usage(
            "no owner given: pass --scope UNIT, --pid PID or --unbound (or set owner.default = \"unbound\" in the configuration)",
        )),
        (DefaultOwner::Require, AskedBy::Annotations(_)) => Err(Error::usage(format!(
            "the container has no systemd unit to bind its channels to (an engine or kubelet on the cgroupfs driver?); {}",
            unbound_hint(config)
        ))),
    }
}

/// What the node's operator can do for containers without a unit: nothing their annotations
/// can say.
pub fn unbound_hint(config: &Config) -> String {
    format!(
        "use the systemd cgroup driver, or let the node's operator give such containers channels that live until hostchan delete (owner.default = \"unbound\" in {})",
        config.origin()
    )
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
    if let Some(reason) = never_an_owner(name) {
        return Err(Error::invalid(
            "scope",
            name,
            format!("{reason}, never a container's owner; give the container's unit"),
        ));
    }
    Ok(name.to_owned())
}

/// The systemd cgroup path of a process, from /proc/<pid>/cgroup: the `name=systemd` line on
/// cgroup v1 and hybrid hosts, the `0::` line on v2.
pub fn systemd_cgroup_of_pid(pid: i32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::owner(format!("cannot read {path} to find the unit of pid {pid}")).caused_by(e)
    })?;
    systemd_cgroup(&text).ok_or_else(|| {
        Error::owner(format!(
            "{path} has no systemd cgroup line (name=systemd or 0::)"
        ))
    })
}

pub fn systemd_cgroup(text: &str) -> Option<String> {
    let named = text
        .lines()
        .find_map(|line| line.split_once(":name=systemd:").map(|(_, p)| p));
    named
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("0::")))
        .map(str::to_owned)
}

/// That the owner unit runs, and not under `user.slice` (a user's own units, never a
/// container's owner; a unit named by the caller has only had its name checked). One call to
/// systemd, which also brings the owner's memory figures: returned, for the channel's
/// memory check.
pub fn check_owner_active(systemd: &dyn SystemdOps, owner: &str) -> Result<Memory> {
    let facts = systemd.owner_facts(owner)?;
    let status = &facts.status;
    if status.is_active() {
        if facts.control_group.split('/').any(|c| c == "user.slice") {
            return Err(Error::owner(format!(
                "owner unit {owner} runs under user.slice ({}), a user's own units, never a container's owner",
                facts.control_group
            )));
        }
        return Ok(facts.memory);
    }
    if status.exists() {
        return Err(Error::owner(format!(
            "owner unit {owner} is {} ({}); a channel can only be bound to a running unit",
            status.active_state, status.sub_state
        )));
    }
    Err(Error::owner(format!(
        "owner unit {owner} does not exist; give the container's running scope (systemctl list-units --type=scope) or --unbound"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_from_cgroup_files() {
        let hybrid = "12:memory:/system.slice/runc-ctr1.scope\n1:name=systemd:/system.slice/runc-ctr1.scope\n0::/system.slice/runc-ctr1.scope\n";
        assert_eq!(
            systemd_cgroup(hybrid).as_deref(),
            Some("/system.slice/runc-ctr1.scope")
        );
        let v2 = "0::/machine.slice/libpod-4f2a.scope/container\n";
        assert_eq!(
            systemd_cgroup(v2).as_deref(),
            Some("/machine.slice/libpod-4f2a.scope/container")
        );
        assert_eq!(systemd_cgroup("3:cpu:/x\n"), None);
    }

    /// The decision table of [`owner_of_cgroup`], row by row.
    #[test]
    fn owner_policy_table() {
        use PathOwner::*;
        let container = |unit: &str| Container(unit.to_owned());
        let rows: &[(&str, PathOwner)] = &[
            (
                "/machine.slice/libpod-4f2a.scope/container",
                container("libpod-4f2a.scope"),
            ),
            (
                "/system.slice/docker-ab12.scope",
                container("docker-ab12.scope"),
            ),
            (
                "/kubepods.slice/kubepods-pod1.slice/crio-ab.scope",
                container("crio-ab.scope"),
            ),
            (
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope",
                container("cri-containerd-ab.scope"),
            ),
            (
                "/system.slice/isulad-ab.scope",
                container("isulad-ab.scope"),
            ),
            (
                "/machine.slice/machine-web.scope/payload",
                container("machine-web.scope"),
            ),
            (
                "/system.slice/runc-ctr1.scope",
                container("runc-ctr1.scope"),
            ),
            (
                "/system.slice/crun-ctr1.scope",
                container("crun-ctr1.scope"),
            ),
            (
                "/machine.slice/systemd-nspawn@web.service/payload",
                container("systemd-nspawn@web.service"),
            ),
            // The innermost unit decides: a container's scope inside a service.
            (
                "/system.slice/engine.service/libpod-1.scope",
                container("libpod-1.scope"),
            ),
        ];
        for (path, expected) in rows {
            assert_eq!(&owner_of_cgroup(path), expected, "{path}");
        }
        let refused: &[(&str, &str, &str)] = &[
            (
                "/user.slice/user-0.slice/session-3.scope",
                "session-3.scope",
                "login session",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
                "x.service",
                "user.slice",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-1.scope",
                "libpod-1.scope",
                "user.slice",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                "user@1000.service",
                "user's service manager",
            ),
            ("/init.scope", "init.scope", "PID 1"),
            (
                "/system.slice/sshd.service",
                "sshd.service",
                "not a container engine's unit",
            ),
            (
                "/system.slice/run-r1.scope",
                "run-r1.scope",
                "name it with --scope",
            ),
            (
                "/prefix/user.slice/user-1.slice/user@1.service/libpod-1.scope",
                "libpod-1.scope",
                "user.slice",
            ),
        ];
        for (path, unit, why) in refused {
            match owner_of_cgroup(path) {
                Refused { unit: got, reason } => {
                    assert_eq!(&got, unit, "{path}");
                    assert!(reason.contains(why), "{path}: {reason}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        for path in ["/", "/docker/ab12", "/kubepods/besteffort/pod1/ab", ""] {
            assert_eq!(owner_of_cgroup(path), NoUnit, "{path}");
        }
    }

    #[test]
    fn owner_unit_checks() {
        assert!(validate_owner_unit("libpod-4f2a.scope").is_ok());
        assert!(validate_owner_unit("runc-c\\x2d1.scope").is_ok());
        assert!(validate_owner_unit("ctr1.scope").is_ok());
        assert!(validate_owner_unit("systemd-nspawn@web.service").is_ok());
        for bad in [
            "",
            "ctr1",
            ".scope",
            "a b.scope",
            "a/b.scope",
            "x.scope\n",
            "session-3.scope",
            "user@1000.service",
            "user-1000.slice",
            "init.scope",
            "machine.slice",
        ] {
            let err = validate_owner_unit(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
