//! The command line, as clap definitions only (they also feed the man pages and completions).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # A 32 MiB channel shared with the container running in libpod-4f2a.scope
  hostchan create --scope libpod-4f2a.scope --container 4f2a /run/chan/c1:/chan:rw:32M

  # See what would be started, without touching systemd
  hostchan create --dry-run --unbound /run/chan/c2:/data:ro

  # The same, attached inside the container at /chan, bound to the scope of pid 4242
  hostchan create --pid 4242 --container 4f2a /run/chan/c1:/chan:rw:32M

  # Kept through the container's stops and starts, until hostchan delete --container 4f2a
  hostchan create --lifetime delete --pid 4242 --container 4f2a /run/chan/c1:/chan:rw:32M

  hostchan list
  hostchan status /run/chan/c1
  hostchan delete /run/chan/c1
  hostchan delete --container 4f2a

Spec: <host path>:<container path>[:<rw|ro>[:<size>]]
  size is a number with an optional unit b, k, m, g, t (powers of 1024; 1.5g is allowed);
  default 64M, at least one page, at most half of the physical memory.";

const CONFIG_FILE: &str = "\
Configuration file:
/etc/hostchan/config.toml, in TOML; every key is optional.

[channels]
  default_size = \"64M\"     size of a channel whose spec gives none
  max_size = \"50%\"         largest channel: bytes, \"8G\", or a percentage of physical memory;
                           never above half of it (bytes are capped, more than 50% is an error)
  allowed_roots = []       host paths from the CLI must lie under one of these; empty:
                           anywhere outside the protected system trees, refused in any case
  lifetime = \"stop\"        \"stop\": a channel goes with its owner (the container's stop);
                           \"delete\": it lives until hostchan delete --container
  idle_limit = \"7d\"        gc deletes a \"delete\" channel whose container was not seen
                           for this long (\"0\": never)
  check_available_memory = true
                           refuse a size above MemAvailable, as iSulad does
[tmpfs]
  noexec = true            mount channels noexec (nosuid and nodev are always set)
  nr_inodes = 65536        cap the files in a channel; absent: the kernel's default
[owner]
  default = \"require\"      without --scope, --pid or --unbound: \"require\" refuses,
                           \"unbound\" makes an unbound channel
  allow_unbound = true     whether channels bound to no unit may be made at all
[hook]                     channels asked for by annotations: the OCI hook's and the NRI
                           plugin's (hostchan nri), whoever wrote the container or pod
  allowed_roots = [\"/run/hostchan\"]
                           host paths must lie under one of these (never empty)
  tenancy = \"subtree\"      \"subtree\": a pod's paths under <root>/<its namespace>/, another
                           container's under <root>/<its id>/; \"shared\": anywhere below a root
  delete_lifetime = \"engine\"
                           who may ask for lifetime=delete: \"engine\" (oci-hook
                           --engine-deletes), \"allow\", \"refuse\"
  max_channels_per_container = 16
                           channels one container's annotations may ask for
  max_total_size = \"50%\"   their sizes together: bytes, \"8G\" or % of RAM (at most half)
  max_path_depth = 16      directories in a host path from annotations, at most
  max_path_length = 1024   bytes in a host path from annotations, at most

[node]
  max_total_size = \"50%\"   all channels on the node together, whoever asked: bytes, \"8G\"
                           or % of RAM (at most half); a create past it is refused

A wrong key, type or value is reported with the file, line and key, and create does nothing
(exit 2). The hook and the NRI plugin read the file at every container; delete, gc and the
cleanup units never read it.";

#[derive(Debug, Parser)]
#[command(
    name = "hostchan",
    version,
    about = "Host channels for containers: a size-limited tmpfs shared by the host and one container, owned by systemd",
    long_about = None,
    after_help = EXAMPLES,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Output format; json prints results, and failures as {"error": ...}, on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Log more on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The configuration file [default: /etc/hostchan/config.toml, if it exists].
    #[arg(long, global = true, value_name = "PATH", env = "HOSTCHAN_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a channel: a tmpfs at the host path, bound to its owner's lifetime.
    Create(CreateArgs),
    /// Delete a channel (or all of one container's): unmount it and remove its directory.
    #[command(group(ArgGroup::new("which").required(true).args(["channel", "container"])))]
    Delete {
        /// The channel's host path or its .mount unit name.
        channel: Option<String>,
        /// Delete every channel of this container instead.
        #[arg(long, value_name = "ID")]
        container: Option<String>,
    },
    /// List every channel with its state and usage.
    List,
    /// Print the node's channels as Prometheus metrics (text format), for a scrape or
    /// node_exporter's textfile collector.
    Metrics,
    /// Show one channel in detail.
    Status {
        /// The channel's host path or its .mount unit name.
        channel: String,
    },
    /// Run as an OCI hook: read the container state on stdin, create the channels named in its
    /// io.hostchan.channel[.NAME] annotations (createRuntime, prestart) or remove them (poststop).
    OciHook {
        /// The hook stage; by default taken from the state's status (creating: createRuntime,
        /// stopped: poststop).
        #[arg(long, value_enum)]
        stage: Option<crate::oci::Stage>,
        /// The engine deletes its containers through `hostchan delete --container ID` (or relies
        /// on channels.idle_limit, as iSulad does): annotations may then ask for the delete
        /// lifetime where hook.delete_lifetime = "engine" (the default).
        #[arg(long)]
        engine_deletes: bool,
    },
    /// Run as an NRI plugin (containerd 1.7+, CRI-O 1.26+): make the channels a Kubernetes pod's
    /// io.hostchan.channel[.NAME] annotations ask for as its containers are created, and have the
    /// runtime bind-mount them; remove them with the container or the pod.
    Nri(NriArgs),
    /// Print a CDI spec whose device hostchan.io/channel=hook runs hostchan as an OCI hook at
    /// createRuntime and poststop (for engines that take CDI devices: podman, CRI-O,
    /// containerd, Docker 25+); install it as /etc/cdi/hostchan.json.
    CdiSpec {
        /// The hostchan binary the hooks run.
        #[arg(long, value_name = "PATH", default_value = "/usr/bin/hostchan")]
        hostchan: std::path::PathBuf,
    },
    /// Remove what crashes and reboots left: the directory and record of every channel whose
    /// host path is no longer mounted (a directory only while empty; a mount point never).
    Gc {
        /// Show what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask systemd which channel units it still has (early boot, before D-Bus; a
        /// reboot loses every transient unit): a record is a leftover when its path is not
        /// mounted.
        #[arg(long)]
        offline: bool,
        /// Do nothing if another hostchan holds the record lock, instead of waiting for it:
        /// what hostchan-prune.service runs when channels stop (a create waiting for a stopped
        /// unit to go would otherwise wait for this gc, which waits for it).
        #[arg(long)]
        no_wait: bool,
        /// With --no-wait: stay, and look again each time systemd unloads a unit, until none
        /// has for SECONDS (hostchan-prune.service: its stops then fork nothing each).
        #[arg(long, value_name = "SECONDS", requires = "no_wait")]
        linger: Option<u64>,
    },
    /// Check or show the configuration (/etc/hostchan/config.toml, or --config).
    #[command(subcommand, after_long_help = CONFIG_FILE)]
    Config(ConfigCommand),
    /// Remove an unmounted channel's directory and record (run by the channel's cleanup unit).
    #[command(hide = true)]
    Cleanup {
        /// The channel's id: nothing is removed unless the record is this channel's.
        #[arg(long)]
        id: String,
        /// The channel's host path.
        host_path: String,
    },
}

/// `hostchan nri`'s arguments, handed to the plugin as [`crate::nri::NriArgs`].
#[derive(Debug, Clone, Args)]
pub struct NriArgs {
    /// The runtime's NRI socket; not used when the runtime started the plugin (NRI_PLUGIN_SOCKET).
    #[arg(long, value_name = "PATH", default_value = crate::nri::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The name the plugin registers with.
    #[arg(long, env = "NRI_PLUGIN_NAME", default_value = "hostchan")]
    pub name: String,
    /// The plugin's index, two digits: the runtime calls plugins in ascending order.
    #[arg(long, env = "NRI_PLUGIN_IDX", default_value = "10")]
    pub index: String,
    /// How long the runtime waits for an answer (containerd's plugin_request_timeout, 2 s by
    /// default); a runtime that says it at Configure (NRI 0.7 and later) is believed instead.
    /// The plugin answers within three quarters of it.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 2000)]
    pub request_timeout: u64,
    /// Serve the metrics (`/metrics`) and a health check (`/healthz`: 200 only while registered
    /// with the runtime and synchronized) over HTTP at unix:PATH (a socket only root can use) or
    /// IP:PORT (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_listen: Option<String>,
    /// Write the metrics to this file every 15 s, for node_exporter's textfile collector (on
    /// Debian: /var/lib/prometheus/node-exporter/hostchan.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file; exit 2 naming the file, line and key if it is wrong.
    Check,
    /// Print the effective configuration (the file merged over the built-in defaults).
    Show,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("owner").args(["scope", "unbound"])))]
pub struct CreateArgs {
    /// Bind the channel to this unit (normally the container's .scope): when it stops, the
    /// channel is unmounted and its directory removed.
    #[arg(long, value_name = "UNIT")]
    pub scope: Option<String>,

    /// Keep the channel until `hostchan delete` (for engines without a systemd scope). Without
    /// --scope, --pid or --unbound, owner.default in the configuration decides.
    #[arg(long)]
    pub unbound: bool,

    /// Also attach the channel inside the container this process belongs to, and bind it to
    /// that process's scope (unless --scope or --unbound says otherwise).
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,

    /// The container's id, shown in list and status, and used by delete --container.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,

    /// How long the channel lives: `stop` (with the owner unit: the container's stop) or `delete`
    /// (with the container: through stops and starts, bound to a unit hostchan keeps for the
    /// container, until `hostchan delete --container ID`); needs --container. Default:
    /// channels.lifetime in the configuration.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub lifetime: Option<crate::model::Lifetime>,

    /// Make UID:GID the owner of the channel's root directory (for a container whose root is
    /// mapped to an unprivileged host user); default root.
    #[arg(long, value_name = "UID:GID")]
    pub root_owner: Option<String>,

    /// Raise the owner's memory limit (MemoryMax) by the channel's size, so that the
    /// container's own writes into the channel cannot get it OOM-killed.
    #[arg(long)]
    pub grow_memory_limit: bool,

    /// Validate and print the units that would be started, without contacting systemd.
    #[arg(long)]
    pub dry_run: bool,

    /// <host path>:<container path>[:<rw|ro>[:<size>]]
    #[arg(value_name = "SPEC")]
    pub spec: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hostchan-config(8) comes from CONFIG_FILE: every key the shipped file names is in it.
    #[test]
    fn the_config_help_names_every_key_of_the_shipped_file() {
        let shipped = include_str!("../packaging/config.toml");
        for line in shipped.lines() {
            let Some((key, _)) = line.strip_prefix('#').and_then(|l| l.split_once(" = ")) else {
                continue;
            };
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                assert!(
                    CONFIG_FILE.contains(&format!("  {key} = ")),
                    "hostchan config --help does not name {key}"
                );
            }
        }
    }
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_needs_exactly_one_owner() {
        // No owner is the configuration's call (owner.default), not clap's.
        assert!(Cli::try_parse_from(["hostchan", "create", "/a:/b"]).is_ok());
        assert!(Cli::try_parse_from([
            "hostchan",
            "create",
            "--scope",
            "x.scope",
            "--unbound",
            "/a:/b"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["hostchan", "create", "--unbound", "/a:/b"]).is_ok());
        assert!(Cli::try_parse_from(["hostchan", "create", "--pid", "1", "/a:/b"]).is_ok());
        assert!(
            Cli::try_parse_from(["hostchan", "create", "--pid", "1", "--unbound", "/a:/b"]).is_ok()
        );
        assert!(Cli::try_parse_from(["hostchan", "delete"]).is_err());
        assert!(Cli::try_parse_from(["hostchan", "delete", "--container", "c1"]).is_ok());
        let cli = Cli::try_parse_from([
            "hostchan", "create", "/a:/b", "--scope", "x.scope", "--output", "json",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
    }
}
