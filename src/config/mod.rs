//! /etc/hostchan/config.toml: an operator's defaults and bounds. Optional; without it the
//! built-in rules apply (64 MiB default, half of the physical memory at most, any host path
//! outside the protected trees, `noexec`, an owner required).
//!
//! Parsing is pure ([`Config::parse`] takes the text and the machine's memory); a mistake is
//! reported with the file, line and key, and hostchan then does nothing at all.

use std::fmt;
use std::path::{Path, PathBuf};

mod file;
mod machine;

use serde::{Deserialize, Serialize};

pub use machine::Machine;

use crate::error::{Error, Result};
use crate::model::{AskedBy, Lifetime};
use crate::spec::{format_size, Limits, DEFAULT_SIZE};

pub const DEFAULT_PATH: &str = "/etc/hostchan/config.toml";

/// The upper bound on any channel, whatever the file says.
const MAX_PERCENT_OF_MEMORY: u64 = 50;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The file it came from; `None` when built-in defaults apply.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The smallest channel: one page of this machine.
    #[serde(skip)]
    pub page_size: u64,
    /// The largest channel ever: half of this machine's memory.
    #[serde(skip)]
    pub half_of_memory: u64,
    pub channels: ChannelPolicy,
    pub tmpfs: Tmpfs,
    pub owner: OwnerPolicy,
    pub hook: Hook,
    pub node: Node,
}

/// What every channel on the node may come to together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The sum of the sizes of all channels on the node, as written: a create past it is
    /// refused, whoever asks. Many containers' channels, each within its own bounds, could
    /// otherwise promise more memory than the node has.
    pub max_total_size: MaxSize,
    /// `max_total_size` in bytes on this machine.
    #[serde(skip)]
    pub effective_max_total_size: u64,
}

/// `/run/hostchan/<namespace>/<pod>/<container>/<name>` is 6 deep; templates and an operator's
/// own root add a few.
pub const DEFAULT_MAX_PATH_DEPTH: usize = 16;
/// Room for a namespace (63), a pod name (253), a container name (63) and more.
pub const DEFAULT_MAX_PATH_LENGTH: usize = 1024;

/// The root hook channels go under when the configuration names none: hostchan's own, made
/// `0755 root` when missing.
pub const DEFAULT_HOOK_ROOT: &str = "/run/hostchan";

/// Channels asked for by container annotations, which whoever creates a container writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    /// Host paths from annotations must lie under one of these; never empty.
    pub allowed_roots: Vec<PathBuf>,
    /// Where below a root a tenant's annotations may name paths.
    pub tenancy: Tenancy,
    /// Whether annotations may ask for the `delete` lifetime.
    pub delete_lifetime: DeleteLifetime,
    /// The most channels one container's annotations may ask for.
    pub max_channels_per_container: usize,
    /// The most components a host path from annotations may have: a path thousands of
    /// directories deep costs a teardown as many removals.
    pub max_path_depth: usize,
    /// The most bytes a host path from annotations may have.
    pub max_path_length: usize,
    /// The most one container's channels may come to together, as written.
    pub max_total_size: MaxSize,
    /// `max_total_size` in bytes on this machine.
    #[serde(skip)]
    pub effective_max_total_size: u64,
}

/// Whether annotations may ask for channels that outlive the container's stops
/// (`io.hostchan.lifetime=delete`), which only a `hostchan delete --container` (or the idle
/// limit) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteLifetime {
    /// Where the engine's hook says it deletes containers through hostchan
    /// (`oci-hook --engine-deletes`, as the shipped iSulad hook file does).
    Engine,
    /// Everywhere.
    Allow,
    /// Nowhere: annotations get the `stop` lifetime or nothing.
    Refuse,
}

impl fmt::Display for DeleteLifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteLifetime::Engine => "\"engine\"",
            DeleteLifetime::Allow => "\"allow\"",
            DeleteLifetime::Refuse => "\"refuse\"",
        })
    }
}

/// How the hook's roots are shared between the tenants whose annotations name paths in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tenancy {
    /// `<root>/<pod namespace>/...`, or `<root>/<container id>/...` for a container outside
    /// any pod: no tenant can take, shadow or block another's paths.
    Subtree,
    /// Anywhere below a root, for every tenant: for hosts where whoever writes annotations is
    /// trusted alike (a single-tenant node), set by the operator.
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelPolicy {
    /// Bytes.
    pub default_size: u64,
    /// As written (`"50%"` or bytes), and what it comes to on this machine.
    pub max_size: MaxSize,
    /// Bytes on this machine: `max_size`, capped at half of the physical memory.
    pub effective_max_size: u64,
    /// Host paths must lie under one of these; empty means anywhere outside the protected trees.
    pub allowed_roots: Vec<PathBuf>,
    /// The lifetime of a channel whose request names none.
    pub lifetime: Lifetime,
    /// A `delete`-lifetime channel whose container has not been seen (started or stopped) for
    /// this many seconds is removed by `hostchan gc`: engines that never say "delete" (iSulad
    /// has no hook for it) do not leak channels forever. 0: never.
    pub idle_limit: u64,
    /// Refuse a size above the memory available now (`MemAvailable`), as iSulad does.
    pub check_available_memory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSize {
    Bytes(u64),
    PercentOfMemory(u64),
}

impl fmt::Display for MaxSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxSize::Bytes(bytes) => write!(f, "{bytes}"),
            MaxSize::PercentOfMemory(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for MaxSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxSize::Bytes(bytes) => serializer.serialize_u64(*bytes),
            MaxSize::PercentOfMemory(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tmpfs {
    pub noexec: bool,
    /// `nr_inodes=`: caps the files a channel can hold, so that a container cannot use up
    /// kernel memory with empty files (which `size=` does not count). `None`: the kernel's
    /// default (half of the pages of RAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nr_inodes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerPolicy {
    /// What `create` does when neither --scope, --pid nor --unbound is given.
    pub default: DefaultOwner,
    /// Whether channels that outlive every unit (`--unbound`, and the OCI hook for containers
    /// without a systemd scope) may be made at all.
    pub allow_unbound: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultOwner {
    /// Refuse: the caller must say who owns the channel.
    Require,
    /// Make an unbound channel.
    Unbound,
}

impl Config {
    /// The built-in rules.
    pub fn builtin(machine: &Machine) -> Config {
        let half = machine.mem_total / 2;
        Config {
            source: None,
            page_size: machine.page_size,
            half_of_memory: half,
            channels: ChannelPolicy {
                default_size: DEFAULT_SIZE,
                max_size: MaxSize::PercentOfMemory(MAX_PERCENT_OF_MEMORY),
                effective_max_size: half,
                allowed_roots: Vec::new(),
                lifetime: Lifetime::Stop,
                idle_limit: 7 * 24 * 3600,
                check_available_memory: true,
            },
            tmpfs: Tmpfs {
                noexec: true,
                nr_inodes: None,
            },
            owner: OwnerPolicy {
                default: DefaultOwner::Require,
                allow_unbound: true,
            },
            hook: Hook {
                allowed_roots: vec![PathBuf::from(DEFAULT_HOOK_ROOT)],
                tenancy: Tenancy::Subtree,
                delete_lifetime: DeleteLifetime::Engine,
                max_channels_per_container: 16,
                max_path_depth: DEFAULT_MAX_PATH_DEPTH,
                max_path_length: DEFAULT_MAX_PATH_LENGTH,
                max_total_size: MaxSize::PercentOfMemory(MAX_PERCENT_OF_MEMORY),
                effective_max_total_size: half,
            },
            node: Node {
                max_total_size: MaxSize::PercentOfMemory(MAX_PERCENT_OF_MEMORY),
                effective_max_total_size: half,
            },
        }
    }

    /// Reads `path`; a missing file means the built-in rules, unless the caller named the file.
    pub fn load(path: &Path, named_by_caller: bool) -> Result<Config> {
        let machine = Machine::current()?;
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path, &machine),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named_by_caller => {
                Ok(Config::builtin(&machine))
            }
            Err(e) => Err(Error::config(format!(
                "cannot read configuration file {}: {e}; give an existing file to --config",
                path.display()
            ))),
        }
    }
    /// The size bounds channels are checked against.
    pub fn limits(&self) -> Limits {
        let half = self.channels.effective_max_size == self.half_of_memory;
        Limits {
            min_size: self.page_size,
            max_size: self.channels.effective_max_size,
            max_source: match (&self.source, half) {
                (Some(path), false) => {
                    format!("channels.max_size in {}", path.display())
                }
                _ => "half the physical memory".into(),
            },
            default_size: self.channels.default_size,
        }
    }

    /// Refuses a host path outside the allowed roots (the protected trees are refused by the
    /// spec parser whatever this says).
    /// `[channels] allowed_roots` for the CLI, `[hook] allowed_roots` for channels that
    /// container annotations ask for.
    /// The operator's bounds on how deep and long a host path from annotations may be.
    fn check_path_bounds(&self, host_path: &Path) -> Result<()> {
        let depth = host_path.components().count().saturating_sub(1);
        let length = host_path.as_os_str().len();
        let (what, most, key) = if depth > self.hook.max_path_depth {
            (
                format!("{depth} directories deep"),
                self.hook.max_path_depth,
                "hook.max_path_depth",
            )
        } else if length > self.hook.max_path_length {
            (
                format!("{length} bytes long"),
                self.hook.max_path_length,
                "hook.max_path_length",
            )
        } else {
            return Ok(());
        };
        Err(Error::invalid(
            "host path",
            host_path.display().to_string(),
            format!(
                "is {what}, more than {key} ({most}) in {} allows",
                self.origin()
            ),
        ))
    }

    pub fn check_host_path(&self, host_path: &Path, asked_by: &AskedBy) -> Result<()> {
        let (roots, key) = match asked_by {
            AskedBy::Cli => (&self.channels.allowed_roots, "channels.allowed_roots"),
            AskedBy::Annotations(_) => (&self.hook.allowed_roots, "hook.allowed_roots"),
        };
        let inside = |root: &PathBuf| host_path.starts_with(root) && host_path != root;
        if *asked_by == AskedBy::Cli && roots.is_empty() {
            return Ok(());
        }
        if let AskedBy::Annotations(_) = asked_by {
            self.check_path_bounds(host_path)?;
        }
        if let (AskedBy::Annotations(tenant), Tenancy::Subtree) = (asked_by, self.hook.tenancy) {
            let subtrees: Vec<PathBuf> = roots
                .iter()
                .map(|root| root.join(tenant.subtree_name()))
                .collect();
            if subtrees.iter().any(inside) {
                return Ok(());
            }
            let shown: Vec<String> = subtrees
                .iter()
                .map(|s| format!("{}/", s.display()))
                .collect();
            return Err(Error::invalid(
                "host path",
                host_path.display().to_string(),
                format!(
                    "is outside the subtree of {tenant}: its annotations may only name paths under {} (hook.tenancy in {})",
                    shown.join(" or "),
                    self.origin()
                ),
            ));
        }
        if roots.iter().any(inside) {
            return Ok(());
        }
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(Error::invalid(
            "host path",
            host_path.display().to_string(),
            format!(
                "is outside the allowed roots ({}) of {key} in {}; choose a path under one of them",
                shown.join(", "),
                self.origin()
            ),
        ))
    }

    /// Refuses a size above the memory available now (`MemAvailable`), as iSulad does.
    pub fn check_available_memory(&self, size: u64) -> Result<()> {
        self.check_available_memory_in(size, &machine::meminfo()?)
    }

    fn check_available_memory_in(&self, size: u64, meminfo: &str) -> Result<()> {
        let Some(available) = machine::meminfo_bytes(meminfo, "MemAvailable:") else {
            return Ok(());
        };
        if size > available {
            return Err(Error::invalid(
                "size",
                format_size(size),
                format!(
                    "is {size} bytes, above the memory available now (MemAvailable, {available} bytes); choose a smaller size, or set channels.check_available_memory = false in {}",
                    self.origin()
                ),
            ));
        }
        Ok(())
    }

    /// The most one container's annotated channels may come to together, in bytes.
    pub fn max_total_size_per_container(&self) -> u64 {
        self.hook.effective_max_total_size
    }

    /// Where this configuration came from, for messages.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => "the built-in defaults".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file::{format_duration, parse_duration};
    use super::machine::mem_total_bytes;
    use super::*;
    use crate::model::Tenant;

    const GIB: u64 = 1 << 30;
    const MACHINE: Machine = Machine {
        mem_total: 16 * GIB,
        page_size: 4096,
    };

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/hostchan/config.toml"), &MACHINE)
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Err(e) => {
                assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{e}");
                assert!(!e.to_string().contains('\n'), "{e}");
                e.to_string()
            }
            Ok(config) => panic!("{text:?} was accepted: {config:?}"),
        }
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24684084 kB\nMemFree: 1 kB\n"),
            Some(24_684_084 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn empty_file_is_the_builtin_rules() {
        let config = parse("").unwrap();
        assert_eq!(
            Config {
                source: None,
                ..config.clone()
            },
            Config::builtin(&MACHINE)
        );
        assert_eq!(config.channels.effective_max_size, 8 * GIB);
        assert_eq!(config.channels.default_size, 64 << 20);
        assert!(config.tmpfs.noexec);
        assert_eq!(config.owner.default, DefaultOwner::Require);
    }

    #[test]
    fn every_key() {
        let config = parse(
            r#"
[channels]
default_size = "16M"
max_size = "25%"
allowed_roots = ["/run/chan/", "/srv//channels"]

[tmpfs]
noexec = false
nr_inodes = 1024

[owner]
default = "unbound"
allow_unbound = true
"#,
        )
        .unwrap();
        assert_eq!(config.channels.default_size, 16 << 20);
        assert_eq!(config.channels.max_size, MaxSize::PercentOfMemory(25));
        assert_eq!(config.channels.effective_max_size, 4 * GIB);
        assert_eq!(
            config.channels.allowed_roots,
            [PathBuf::from("/run/chan"), PathBuf::from("/srv/channels")]
        );
        assert!(!config.tmpfs.noexec);
        assert_eq!(config.tmpfs.nr_inodes, Some(1024));
        assert_eq!(config.owner.default, DefaultOwner::Unbound);
        let limits = config.limits();
        assert_eq!(limits.max_size, 4 * GIB);
        assert_eq!(limits.default_size, 16 << 20);
    }

    #[test]
    fn byte_maximum_is_capped_at_half_of_memory() {
        let config = parse("[channels]\nmax_size = \"64G\"\n").unwrap();
        assert_eq!(config.channels.max_size, MaxSize::Bytes(64 * GIB));
        assert_eq!(config.channels.effective_max_size, 8 * GIB);
        let config = parse("[channels]\nmax_size = 1048576\n").unwrap();
        assert_eq!(config.channels.effective_max_size, 1 << 20);
        // The built-in default size follows a maximum set below it.
        assert_eq!(config.channels.default_size, 1 << 20);
    }

    #[test]
    fn annotations_host_paths_are_bounded_in_depth_and_length() {
        use crate::model::Tenant;
        let shop = &AskedBy::Annotations(Tenant::Namespace("shop".into()));
        let builtin = parse("").unwrap();
        let deep = |n: usize| PathBuf::from(format!("/run/hostchan/shop{}", "/d".repeat(n)));
        assert!(builtin.check_host_path(&deep(13), shop).is_ok());
        let err = builtin.check_host_path(&deep(14), shop).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("is 17 directories deep, more than hook.max_path_depth (16)"),
            "{err}"
        );
        // The command line is root's: not bounded by the hook's settings.
        assert!(builtin.check_host_path(&deep(14), &AskedBy::Cli).is_ok());
        let long = PathBuf::from(format!("/run/hostchan/shop/{}", "x".repeat(1010)));
        let err = builtin.check_host_path(&long, shop).unwrap_err();
        assert!(
            err.to_string()
                .contains("more than hook.max_path_length (1024)"),
            "{err}"
        );
        let raised = parse("[hook]\nmax_path_depth = 40\nmax_path_length = 2048\n").unwrap();
        assert!(raised.check_host_path(&deep(30), shop).is_ok());
        assert!(raised.check_host_path(&long, shop).is_ok());
        assert!(parse("[hook]\nmax_path_depth = 0\n").is_err());
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let cases = [
            (
                "[channels]\ndefault_sise = \"1M\"\n",
                "/etc/hostchan/config.toml:2: channels.default_sise: unknown field",
            ),
            (
                "[tmpfs]\n\nnoexec = \"yes\"\n",
                "/etc/hostchan/config.toml:3: tmpfs.noexec: invalid type",
            ),
            ("[volumes]\n", "/etc/hostchan/config.toml:1: unknown field"),
            (
                "[channels]\nmax_size = \"60%\"\n",
                "/etc/hostchan/config.toml:2: channels.max_size \"60%\" must be between 1% and 50%",
            ),
            (
                "[channels]\nmax_size = \"lots\"\n",
                "/etc/hostchan/config.toml:2: channels.max_size \"lots\"",
            ),
            (
                "[channels]\nmax_size = \"1G\"\ndefault_size = \"2G\"\n",
                "/etc/hostchan/config.toml:3: channels.default_size \"2G\" is above the maximum",
            ),
            (
                "[channels]\ndefault_size = 10\n",
                "/etc/hostchan/config.toml:2: channels.default_size \"10\" is below one page",
            ),
            (
                "[channels]\ndefault_size = -1\n",
                "/etc/hostchan/config.toml:2: channels.default_size: a size cannot be negative",
            ),
            (
                "[channels]\nallowed_roots = [\"/usr/local/chan\"]\n",
                "channels.allowed_roots \"/usr/local/chan\" is inside /usr",
            ),
            (
                "[channels]\nallowed_roots = [\"run\"]\n",
                "channels.allowed_roots \"run\" must be an absolute path",
            ),
            (
                "[channels]\nallowed_roots = [\"/\"]\n",
                "would allow everything",
            ),
            (
                "[tmpfs]\nnr_inodes = 0\n",
                "tmpfs.nr_inodes \"0\" must be at least 2",
            ),
            (
                "[owner]\ndefault = \"maybe\"\n",
                ":2: owner.default: unknown variant",
            ),
            (
                "[owner]\ndefault = \"unbound\"\nallow_unbound = false\n",
                ":2: owner.default \"unbound\" contradicts",
            ),
            ("[channels\n", "/etc/hostchan/config.toml:1:"),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(
                message.contains(expected),
                "{text:?}: {message:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn sizes_above_the_memory_available_now() {
        let config = Config::builtin(&MACHINE);
        let meminfo = "MemTotal: 24000000 kB\nMemAvailable:     1024 kB\n";
        assert!(config.check_available_memory_in(1 << 20, meminfo).is_ok());
        let err = config
            .check_available_memory_in((1 << 20) + 1, meminfo)
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains(
                "is 1048577 bytes, above the memory available now (MemAvailable, 1048576 bytes)"
            ),
            "{err}"
        );
        // No MemAvailable (kernels before 3.14): nothing to check against.
        assert!(config
            .check_available_memory_in(u64::MAX, "MemTotal: 1 kB\n")
            .is_ok());
    }

    #[test]
    fn lifetimes_and_durations() {
        let config = parse("[channels]\nlifetime = \"delete\"\nidle_limit = \"12h\"\ncheck_available_memory = false\n").unwrap();
        assert_eq!(config.channels.lifetime, Lifetime::Delete);
        assert_eq!(config.channels.idle_limit, 12 * 3600);
        assert!(!config.channels.check_available_memory);
        for (text, seconds) in [
            ("7d", Some(604_800)),
            ("0", Some(0)),
            ("90", Some(90)),
            ("30m", Some(1800)),
            ("1w", None),
            ("d", None),
            ("-1h", None),
        ] {
            assert_eq!(parse_duration(text), seconds, "{text}");
        }
        assert_eq!(format_duration(604_800), "7d");
        assert_eq!(format_duration(90), "90s");
        let err = error("[channels]\nidle_limit = \"soon\"\n");
        assert!(
            err.contains("channels.idle_limit \"soon\" is not a duration"),
            "{err}"
        );
        let err = error("[channels]\nlifetime = \"forever\"\n");
        assert!(err.contains("channels.lifetime"), "{err}");
    }

    #[test]
    fn allowed_roots() {
        let cli = &AskedBy::Cli;
        let shop = &AskedBy::Annotations(Tenant::Namespace("shop".into()));
        let c1 = &AskedBy::Annotations(Tenant::Container("c1".into()));
        let config = parse("[channels]\nallowed_roots = [\"/run/chan\"]\n").unwrap();
        assert!(config
            .check_host_path(Path::new("/run/chan/c1"), cli)
            .is_ok());
        let refused = config
            .check_host_path(Path::new("/run/chance"), cli)
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "invalid host path \"/run/chance\": is outside the allowed roots (/run/chan) of channels.allowed_roots in /etc/hostchan/config.toml; choose a path under one of them"
        );
        assert!(config.check_host_path(Path::new("/run/chan"), cli).is_err());
        // Annotations have their own roots, /run/hostchan by default, whatever [channels] says,
        // and in them only the tenant's own subtree.
        assert!(config
            .check_host_path(Path::new("/run/chan/shop/c1"), shop)
            .is_err());
        assert!(config
            .check_host_path(Path::new("/run/hostchan/shop/c1"), shop)
            .is_ok());
        let builtin = Config::builtin(&MACHINE);
        assert!(builtin.check_host_path(Path::new("/anywhere"), cli).is_ok());
        for (path, tenant) in [
            ("/run/hostchan/c1", shop),
            ("/run/hostchan/shop", shop),
            ("/run/hostchan/shopping/x", shop),
            ("/run/hostchan/evil/x", shop),
            ("/anywhere", shop),
            ("/run/hostchan/shop/x", c1),
        ] {
            let refused = builtin
                .check_host_path(Path::new(path), tenant)
                .unwrap_err()
                .to_string();
            assert!(refused.contains("is outside the subtree of"), "{refused}");
        }
        let refused = builtin
            .check_host_path(Path::new("/run/hostchan/evil/x"), shop)
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "invalid host path \"/run/hostchan/evil/x\": is outside the subtree of pod namespace shop: its annotations may only name paths under /run/hostchan/shop/ (hook.tenancy in the built-in defaults)"
        );
        assert!(builtin
            .check_host_path(Path::new("/run/hostchan/c1/a/b"), c1)
            .is_ok());
        let hook = parse("[hook]\nallowed_roots = [\"/srv/chan\", \"/run/k8s\"]\n").unwrap();
        assert!(hook
            .check_host_path(Path::new("/run/k8s/shop/p1"), shop)
            .is_ok());
        assert!(hook
            .check_host_path(Path::new("/run/hostchan/shop/p1"), shop)
            .is_err());
        // Widened by the operator: anywhere below a root, for every tenant.
        let shared = parse("[hook]\ntenancy = \"shared\"\n").unwrap();
        assert!(shared
            .check_host_path(Path::new("/run/hostchan/evil/x"), shop)
            .is_ok());
        assert!(shared
            .check_host_path(Path::new("/run/hostchan"), shop)
            .is_err());
        let empty = parse("[hook]\nallowed_roots = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            empty.contains(
                "hook.allowed_roots \"[]\" would let container annotations pick any host path"
            ),
            "{empty}"
        );
        let protected = parse("[hook]\nallowed_roots = [\"/etc/x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(protected.contains("is inside /etc"), "{protected}");
    }

    /// The shipped file documents every key with its default: uncommented, it is the built-in
    /// configuration (but for the one example).
    #[test]
    fn shipped_file_documents_the_defaults() {
        let shipped = include_str!("../../packaging/config.toml");
        assert_eq!(
            parse(shipped).unwrap().channels,
            Config::builtin(&MACHINE).channels
        );
        let uncommented: String = shipped
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&uncommented).unwrap();
        let mut expected = Config::builtin(&MACHINE);
        expected.tmpfs.nr_inodes = Some(65536);
        assert_eq!(
            Config {
                source: None,
                ..config
            },
            expected
        );
        for key in [
            "default_size",
            "max_size",
            "allowed_roots",
            "lifetime",
            "idle_limit",
            "check_available_memory",
            "noexec",
            "nr_inodes",
            "default",
            "allow_unbound",
            "tenancy",
            "delete_lifetime",
            "max_channels_per_container",
            "max_total_size",
            "max_path_depth",
            "max_path_length",
        ] {
            assert!(uncommented.contains(&format!("\n{key} = ")), "{key}");
        }
        assert!(
            uncommented.contains("\n[hook]\nallowed_roots = [\"/run/hostchan\"]")
                || uncommented.contains("\nallowed_roots = [\"/run/hostchan\"]")
        );
    }

    #[test]
    fn show_round_trips() {
        let config = parse(
            "[channels]\nmax_size = \"2G\"\ndefault_size = \"1M\"\nallowed_roots = [\"/run/c\"]\n[tmpfs]\nnr_inodes = 100\n",
        )
        .unwrap();
        let shown = config.to_toml();
        let again = Config::parse(&shown, Path::new("/etc/hostchan/config.toml"), &MACHINE)
            .unwrap_or_else(|e| panic!("{shown}\n{e}"));
        assert_eq!(again, config);
        let builtin = Config::builtin(&MACHINE);
        let again = Config::parse(&builtin.to_toml(), Path::new("/x"), &MACHINE).unwrap();
        assert_eq!(again.channels, builtin.channels);
    }
}
