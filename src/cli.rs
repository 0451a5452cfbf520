//! The command line, as clap definitions only (they also feed the man pages and completions).

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # A 32 MiB channel shared with the container running in libpod-4f2a.scope
  hostchan create --scope libpod-4f2a.scope --container 4f2a /run/chan/c1:/chan:rw:32M

  # See what would be started, without touching systemd
  hostchan create --dry-run --unbound /run/chan/c2:/data:ro

  hostchan list
  hostchan status /run/chan/c1
  hostchan delete /run/chan/c1

Spec: <host path>:<container path>[:<rw|ro>[:<size>]]
  size is a number with an optional unit b, k, m, g, t (powers of 1024; 1.5g is allowed);
  default 64M, at least one page, at most half of the physical memory.";

#[derive(Debug, Parser)]
#[command(
    name = "hostchan",
    version,
    about = "Host channels for containers: a size-limited tmpfs shared by the host and one container, owned by systemd",
    long_about = None,
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// Output format; json prints results, and failures as {"error": ...}, on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Log more on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

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
    /// Delete a channel: unmount it and remove its directory.
    Delete {
        /// The channel's host path or its .mount unit name.
        channel: String,
    },
    /// List every channel with its state and usage.
    List,
    /// Show one channel in detail.
    Status {
        /// The channel's host path or its .mount unit name.
        channel: String,
    },
    /// Remove an unmounted channel's directory and record (run by the channel's cleanup unit).
    #[command(hide = true)]
    Cleanup {
        /// The channel's host path.
        host_path: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["scope", "unbound"])))]
pub struct CreateArgs {
    /// Bind the channel to this unit (normally the container's .scope): when it stops, the
    /// channel is unmounted and its directory removed.
    #[arg(long, value_name = "UNIT")]
    pub scope: Option<String>,

    /// Keep the channel until `hostchan delete` (for engines without a systemd scope).
    #[arg(long)]
    pub unbound: bool,

    /// The container's id, shown in list and status.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,

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
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_needs_exactly_one_owner() {
        assert!(Cli::try_parse_from(["hostchan", "create", "/a:/b"]).is_err());
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
        let cli = Cli::try_parse_from([
            "hostchan", "create", "/a:/b", "--scope", "x.scope", "--output", "json",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
    }
}
