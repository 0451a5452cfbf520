//! What a channel is in systemd's terms: the transient units to start and their properties.
//! Pure: this is what `create --dry-run` prints and what the systemd client sends.

use std::path::Path;

use serde::Serialize;

use crate::config::Tmpfs;
use crate::model::Owner;
use crate::spec::{format_size, ChannelSpec, RootOwner};
use crate::unit_name;

/// A property value in the D-Bus types systemd expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `as`
    StrList(Vec<String>),
    /// `a(sasb)`: ExecStart=/ExecStop= style command lines.
    Commands(Vec<Command>),
}

/// One command line of an `Exec*=` property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    pub path: String,
    pub argv: Vec<String>,
    pub ignore_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: &'static str,
    pub value: PropertyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransientUnit {
    pub name: String,
    /// In the order they are sent; shown in JSON as an object of name and value.
    #[serde(serialize_with = "properties_as_object")]
    pub properties: Vec<Property>,
}

fn properties_as_object<S: serde::Serializer>(
    properties: &[Property],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(properties.len()))?;
    for property in properties {
        map.serialize_entry(property.name, &property.value)?;
    }
    map.end()
}

/// The units of one channel: the tmpfs mount, and the unit that removes its directory where
/// PID 1 cannot (see [`runtime_directory`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelUnits {
    pub mount: TransientUnit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<TransientUnit>,
}

impl ChannelUnits {
    /// Every unit to start, the mount first.
    pub fn all(&self) -> impl Iterator<Item = &TransientUnit> {
        std::iter::once(&self.mount).chain(&self.cleanup)
    }
}

/// The unit a channel's mount starts when it stops, once for however many stop at once: it
/// removes the records (and the parent directories made for them) of channels whose directory
/// PID 1 removed. Shipped in the packages (`systemd/hostchan-prune.service`).
pub const PRUNE_UNIT: &str = "hostchan-prune.service";

/// Where the channel's directory is one PID 1 removes itself when the mount stops: its path
/// below /run as the mount's `RuntimeDirectory=`. systemd removes it once the tmpfs is
/// unmounted, in the same step that makes the unit inactive, with no process forked for it:
/// a storm's teardown then costs what `systemd-umount` costs. `None` outside /run (systemd has
/// no such setting elsewhere) and under /run/private (which systemd refuses there); those
/// channels have a cleanup unit.
pub fn runtime_directory(host_path: &Path) -> Option<&str> {
    let below = host_path.strip_prefix("/run").ok()?;
    let first = below.components().next()?;
    if first.as_os_str() == "private" {
        return None;
    }
    below.to_str()
}

/// What a channel's units are made from: its spec, owner and container, the operator's tmpfs
/// options, and what the cleanup unit runs.
#[derive(Debug, Clone)]
pub struct UnitInputs<'a> {
    pub spec: &'a ChannelSpec,
    pub owner: &'a Owner,
    pub container: Option<&'a str>,
    pub tmpfs: &'a Tmpfs,
    /// The hostchan binary the cleanup unit runs.
    pub hostchan_binary: &'a Path,
    /// The channel's id, which the cleanup checks against the record before removing anything.
    pub id: &'a str,
    /// The owner of the tmpfs root (`uid=`, `gid=`); root when `None`.
    pub root_owner: Option<RootOwner>,
}

fn prop(name: &'static str, value: PropertyValue) -> Property {
    Property { name, value }
}

fn s(text: impl Into<String>) -> PropertyValue {
    PropertyValue::Str(text.into())
}

fn list(items: &[&str]) -> PropertyValue {
    PropertyValue::StrList(items.iter().map(|i| (*i).to_owned()).collect())
}

pub const DOCUMENTATION: &str = "man:hostchan(8)";

/// The tmpfs options of a channel's host mount.
pub fn mount_options(spec: &ChannelSpec, tmpfs: &Tmpfs, root_owner: Option<RootOwner>) -> String {
    let mut options = format!("mode=1777,size={},nosuid,nodev", spec.size);
    if let Some(owner) = root_owner {
        options.push_str(&format!(",uid={},gid={}", owner.uid, owner.gid));
    }
    if tmpfs.noexec {
        options.push_str(",noexec");
    }
    if let Some(inodes) = tmpfs.nr_inodes {
        options.push_str(&format!(",nr_inodes={inodes}"));
    }
    options
}

/// How every channel mount's description begins: how hostchan knows its mounts among what
/// systemd has loaded.
pub const CHANNEL_DESCRIPTION_PREFIX: &str = "Host channel ";

/// The one line `systemctl status` shows for a channel.
pub fn description(inputs: &UnitInputs<'_>) -> String {
    let spec = inputs.spec;
    let mut text = format!(
        "{CHANNEL_DESCRIPTION_PREFIX}{} -> {} ({}, {})",
        spec.host_path.display(),
        spec.container_path.display(),
        spec.access,
        format_size(spec.size)
    );
    if let Some(container) = inputs.container {
        text.push_str(&format!(" of container {container}"));
    }
    match inputs.owner {
        Owner::Unit(unit) => text.push_str(&format!(", bound to {unit}")),
        Owner::Unbound => text.push_str(", unbound"),
    }
    text
}

pub fn channel_units(inputs: &UnitInputs<'_>) -> ChannelUnits {
    let spec = inputs.spec;
    let host_path = spec.host_path.display().to_string();
    let mount_name = unit_name::mount_unit_name(&spec.host_path);
    let cleanup_name = unit_name::cleanup_unit_name(&mount_name);

    let mut mount = vec![
        prop("Description", s(description(inputs))),
        prop("Documentation", list(&[DOCUMENTATION])),
        prop("What", s("tmpfs")),
        prop("Where", s(&host_path)),
        prop("Type", s("tmpfs")),
        prop(
            "Options",
            s(mount_options(spec, inputs.tmpfs, inputs.root_owner)),
        ),
        // A host process still inside the channel must not keep the path alive once the
        // container is gone; iSulad unmounts lazily for the same reason.
        prop("LazyUnmount", PropertyValue::Bool(true)),
        prop("CollectMode", s("inactive-or-failed")),
    ];
    if let Owner::Unit(owner) = inputs.owner {
        mount.push(prop("BindsTo", list(&[owner])));
        mount.push(prop("After", list(&[owner])));
    }
    if let Some(directory) = runtime_directory(&spec.host_path) {
        // hostchan made the directory (mode 0755, RuntimeDirectoryMode='s default) and checked
        // every ancestor before; systemd finds it there at the start and removes it at the stop.
        mount.push(prop("RuntimeDirectory", list(&[directory])));
        mount.push(prop("OnSuccess", list(&[PRUNE_UNIT])));
        mount.push(prop("OnFailure", list(&[PRUNE_UNIT])));
        return ChannelUnits {
            mount: TransientUnit {
                name: mount_name,
                properties: mount,
            },
            cleanup: None,
        };
    }
    mount.push(prop("Wants", list(&[&cleanup_name])));

    let binary = inputs.hostchan_binary.display().to_string();
    let mut cleanup = oneshot_that_stays(format!("Remove host channel directory {host_path}"));
    cleanup.extend([
        // Bound to the mount, so it is stopped with every unmount, whatever stopped the mount;
        // stopping it removes the directory and the record once the tmpfs is gone.
        prop(
            "ExecStop",
            PropertyValue::Commands(vec![Command {
                path: binary.clone(),
                argv: vec![
                    binary,
                    "cleanup".into(),
                    "--id".into(),
                    inputs.id.to_owned(),
                    host_path,
                ],
                ignore_failure: false,
            }]),
        ),
        // Not ordered against the mount. Its start runs nothing, so it is active in the same
        // pass of PID 1's run queue that forks /bin/mount, before the mount can be up. Its stop
        // then runs beside the unmount instead of after it: PID 1 forks the cleanup and
        // /bin/umount together, and the cleanup waits for the unmount itself: its fork and
        // exec are off the path of every delete and teardown.
        prop("BindsTo", list(&[&mount_name])),
        prop("DefaultDependencies", PropertyValue::Bool(false)),
        // What the cleanup has to say goes to the journal by its own socket (with this unit's
        // name): not connecting stdout and stderr to journald saves PID 1 about half a
        // millisecond on every delete and every teardown.
        prop("StandardOutput", s("null")),
        prop("StandardError", s("null")),
        prop("CollectMode", s("inactive-or-failed")),
    ]);

    ChannelUnits {
        mount: TransientUnit {
            name: mount_name,
            properties: mount,
        },
        cleanup: Some(TransientUnit {
            name: cleanup_name,
            properties: cleanup,
        }),
    }
}

/// The unit that holds a container's `delete`-lifetime channels until it is deleted: the
/// channels are bound to it.
pub fn keeper_unit(name: &str, container: &str) -> TransientUnit {
    holder_unit(
        name,
        format!("Host channels kept for container {container} until it is deleted"),
        None,
    )
}

/// The unit that takes a container's channels down with the container's own unit: the NRI
/// plugin makes them before the container has a unit (bound to the pod's), and starts this
/// once it has one. Bound to that unit, it stops with it, and its stop stops the channels.
pub fn binder_unit(
    name: &str,
    container: &str,
    container_unit: &str,
    mounts: &[&str],
) -> TransientUnit {
    holder_unit(
        name,
        format!("Host channels of container {container}, bound to {container_unit}"),
        Some((container_unit, mounts)),
    )
}

/// A service that does nothing but become active and stay so until it is stopped (the keeper,
/// the binder); `bound`: the unit it is bound to and the mounts its stop stops.
fn holder_unit(name: &str, description: String, bound: Option<(&str, &[&str])>) -> TransientUnit {
    let mut properties = oneshot_that_stays(description);
    // A service needs something to run; this one only has to become active.
    properties.push(prop(
        "ExecStart",
        PropertyValue::Commands(vec![Command {
            path: "/bin/true".into(),
            argv: vec!["/bin/true".into()],
            ignore_failure: false,
        }]),
    ));
    if let Some((unit, mounts)) = bound {
        properties.extend([
            prop("BindsTo", list(&[unit])),
            prop("After", list(&[unit])),
            prop("PropagatesStopTo", list(mounts)),
        ]);
    }
    properties.extend([
        prop("DefaultDependencies", PropertyValue::Bool(false)),
        prop("CollectMode", s("inactive-or-failed")),
    ]);
    TransientUnit {
        name: name.to_owned(),
        properties,
    }
}

/// The start of a service that runs nothing lasting and stays active until stopped.
fn oneshot_that_stays(description: String) -> Vec<Property> {
    vec![
        prop("Description", s(description)),
        prop("Documentation", list(&[DOCUMENTATION])),
        prop("Type", s("oneshot")),
        prop("RemainAfterExit", PropertyValue::Bool(true)),
    ]
}

impl TransientUnit {
    #[cfg(test)]
    pub fn property(&self, name: &str) -> Option<&PropertyValue> {
        self.properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Access;

    const BUILTIN_TMPFS: Tmpfs = Tmpfs {
        noexec: true,
        nr_inodes: None,
    };

    #[test]
    fn tmpfs_options_follow_the_configuration() {
        let spec = spec();
        assert_eq!(
            mount_options(&spec, &BUILTIN_TMPFS, None),
            "mode=1777,size=33554432,nosuid,nodev,noexec"
        );
        let tuned = Tmpfs {
            noexec: false,
            nr_inodes: Some(4096),
        };
        assert_eq!(
            mount_options(&spec, &tuned, Some(RootOwner { uid: 7, gid: 8 })),
            "mode=1777,size=33554432,nosuid,nodev,uid=7,gid=8,nr_inodes=4096"
        );
    }

    fn spec() -> ChannelSpec {
        ChannelSpec {
            host_path: "/run/chan/c-1".into(),
            container_path: "/chan".into(),
            access: Access::Ro,
            size: 32 << 20,
        }
    }

    /// The units of `spec` for `owner` and `container`, with the built-in tmpfs options.
    fn units_of(spec: &ChannelSpec, owner: &Owner, container: Option<&str>) -> ChannelUnits {
        channel_units(&UnitInputs {
            spec,
            owner,
            container,
            tmpfs: &BUILTIN_TMPFS,
            hostchan_binary: Path::new("/usr/bin/hostchan"),
            id: "c0ffee",
            root_owner: None,
        })
    }

    #[test]
    fn mount_bound_to_scope() {
        let spec = spec();
        let owner = Owner::Unit("libpod-abc.scope".into());
        let units = units_of(&spec, &owner, Some("abc"));
        let mount = &units.mount;
        assert_eq!(mount.name, "run-chan-c\\x2d1.mount");
        assert_eq!(mount.property("Where"), Some(&s("/run/chan/c-1")));
        assert_eq!(mount.property("What"), Some(&s("tmpfs")));
        assert_eq!(mount.property("Type"), Some(&s("tmpfs")));
        assert_eq!(
            mount.property("Options"),
            Some(&s("mode=1777,size=33554432,nosuid,nodev,noexec"))
        );
        assert_eq!(
            mount.property("BindsTo"),
            Some(&list(&["libpod-abc.scope"]))
        );
        assert_eq!(mount.property("After"), Some(&list(&["libpod-abc.scope"])));
        assert_eq!(
            mount.property("Description"),
            Some(&s(
                "Host channel /run/chan/c-1 -> /chan (ro, 32M) of container abc, bound to libpod-abc.scope"
            ))
        );
        // Under /run, PID 1 removes the directory itself and no cleanup unit is made.
        assert_eq!(
            mount.property("RuntimeDirectory"),
            Some(&list(&["chan/c-1"]))
        );
        assert_eq!(mount.property("OnSuccess"), Some(&list(&[PRUNE_UNIT])));
        assert_eq!(mount.property("OnFailure"), Some(&list(&[PRUNE_UNIT])));
        assert_eq!(mount.property("Wants"), None);
        assert_eq!(units.cleanup, None);
    }

    #[test]
    fn outside_run_a_cleanup_unit_removes_the_directory() {
        let mut spec = spec();
        spec.host_path = "/srv/chan/c-1".into();
        let units = units_of(&spec, &Owner::Unit("libpod-abc.scope".into()), Some("abc"));
        let mount = &units.mount;
        assert_eq!(mount.property("RuntimeDirectory"), None);
        assert_eq!(mount.property("OnSuccess"), None);
        assert_eq!(
            mount.property("Wants"),
            Some(&list(&["hostchan-cleanup@srv-chan-c\\x2d1.service"]))
        );
        let cleanup = units.cleanup.as_ref().expect("a cleanup unit outside /run");
        assert_eq!(cleanup.name, "hostchan-cleanup@srv-chan-c\\x2d1.service");
        assert_eq!(cleanup.property("BindsTo"), Some(&list(&[&mount.name])));
        assert_eq!(cleanup.property("Before"), None);
        assert_eq!(cleanup.property("After"), None);
        assert_eq!(
            cleanup.property("ExecStop"),
            Some(&PropertyValue::Commands(vec![Command {
                path: "/usr/bin/hostchan".into(),
                argv: vec![
                    "/usr/bin/hostchan".into(),
                    "cleanup".into(),
                    "--id".into(),
                    "c0ffee".into(),
                    "/srv/chan/c-1".into()
                ],
                ignore_failure: false
            }]))
        );
    }

    #[test]
    fn runtime_directories_are_below_run_and_not_private() {
        assert_eq!(runtime_directory(Path::new("/run/a/b")), Some("a/b"));
        assert_eq!(
            runtime_directory(Path::new("/run/private-x")),
            Some("private-x")
        );
        assert_eq!(runtime_directory(Path::new("/run/private/x")), None);
        assert_eq!(runtime_directory(Path::new("/run")), None);
        assert_eq!(runtime_directory(Path::new("/running/x")), None);
        assert_eq!(runtime_directory(Path::new("/srv/run/x")), None);
    }

    #[test]
    fn unbound_has_no_owner_dependency() {
        let spec = spec();
        let units = units_of(&spec, &Owner::Unbound, None);
        assert_eq!(units.mount.property("BindsTo"), None);
        assert_eq!(units.mount.property("After"), None);
        assert!(units
            .mount
            .property("Description")
            .is_some_and(|d| *d == s("Host channel /run/chan/c-1 -> /chan (ro, 32M), unbound")));
    }

    /// A property test of the whole path from spec text to what systemd is sent: for random
    /// specs built from an alphabet rich in what systemd, mount(8) and the kernel treat
    /// specially, whatever the parser accepts reaches systemd exactly (`Where=`, the cleanup's
    /// argv), contains nothing systemd would expand or rewrite, and names the same path.
    #[test]
    fn accepted_specs_reach_systemd_exactly() {
        use crate::spec::{Limits, REWRITTEN_CHARACTERS};
        const ALPHABET: &[&str] = &[
            "/", "/", "/", "a", "b", "-", ".", "..", ":", "$", "{", "}", "%", "\\", ";", "\"", "'",
            " ", "\t", "\n", "\u{0}", ",", "=", "#", "*", "ü", "\u{a0}", "x2d", "run", "~", "@",
        ];
        let limits = Limits {
            min_size: 4096,
            max_size: 1 << 30,
            max_source: "half the physical memory".into(),
            default_size: 1 << 20,
        };
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = 1 + (next() % 12) as usize;
            let mut text = String::from("/");
            for _ in 0..len {
                text.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            let Ok(spec) = ChannelSpec::parse(&format!("{text}:/c"), &limits) else {
                continue;
            };
            accepted += 1;
            let host = spec.host_path.to_str().expect("accepted paths are UTF-8");
            assert!(!host.contains(REWRITTEN_CHARACTERS), "{text:?} -> {host:?}");
            assert!(!host.chars().any(char::is_control), "{text:?}");
            assert!(!host.ends_with(char::is_whitespace), "{text:?}");
            assert!(!host.contains(':'), "{text:?}");
            let units = units_of(&spec, &Owner::Unbound, None);
            assert_eq!(units.mount.property("Where"), Some(&s(host)));
            assert_eq!(
                units.mount.name,
                crate::unit_name::mount_unit_name(&spec.host_path)
            );
            match (&units.cleanup, units.mount.property("RuntimeDirectory")) {
                (None, Some(PropertyValue::StrList(directories))) => {
                    assert_eq!(format!("/run/{}", directories[0]), host);
                }
                (Some(cleanup), None) => match cleanup.property("ExecStop") {
                    Some(PropertyValue::Commands(commands)) => {
                        assert_eq!(commands[0].argv.last().map(String::as_str), Some(host));
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
            // The same path as written, component for component (normalising only drops `.`,
            // empty components and a trailing `/`).
            let written: Vec<&str> = text
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            let sent: Vec<&str> = host.split('/').filter(|c| !c.is_empty()).collect();
            assert_eq!(written, sent, "{text:?}");
        }
        assert!(
            accepted > 1000,
            "only {accepted} accepted: the test proves little"
        );
    }

    /// Every pair of distinct container ids that are accepted gets distinct keeper units, over
    /// short ids, long ids and ids full of the characters systemd escapes; ids whose keeper name
    /// systemd would shorten with a hash are refused.
    #[test]
    fn distinct_container_ids_never_share_a_keeper() {
        let alphabet = b"ab09_.-:@+";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut keepers = std::collections::HashMap::new();
        let mut refused = 0;
        for _ in 0..20_000 {
            let len = 1 + (next() % 300) as usize;
            let mut id = String::from("c");
            for _ in 1..len {
                id.push(alphabet[(next() % alphabet.len() as u64) as usize] as char);
            }
            match crate::spec::validate_container_id(&id) {
                Ok(id) => {
                    let keeper = unit_name::keeper_unit_name(&id);
                    assert!(keeper.len() <= 255, "{keeper}");
                    if let Some(other) = keepers.insert(keeper.clone(), id.clone()) {
                        assert_eq!(other, id, "two ids share {keeper}");
                    }
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > 1000 && keepers.len() > 5000,
            "{refused} refused, {} kept",
            keepers.len()
        );
        assert!(crate::spec::validate_container_id(&"a".repeat(233)).is_ok());
        assert!(crate::spec::validate_container_id(&"a".repeat(234)).is_err());
        assert!(crate::spec::validate_container_id(&format!("a{}", "-".repeat(58))).is_ok());
        assert!(crate::spec::validate_container_id(&format!("a{}", "-".repeat(59))).is_err());
    }
}
