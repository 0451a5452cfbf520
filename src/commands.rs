//! The commands: one dispatch from the parsed command line to the library, and how results and
//! errors reach the caller (text or JSON, exit codes 0, 1 and 2).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::channel::{Ask, AttachTo, Channels, CreateOptions, Given, Target};
use crate::cli::{Cli, Command, ConfigCommand, OutputFormat};
use crate::config::{self, Config};
use crate::error::{cut, write_at_once, Context, Error, Result, EXIT_USAGE, QUOTE_LIMIT};
use crate::model::AskedBy;
use crate::oci;
use crate::output::{Listing, Report};
use crate::owner::AskedOwner;
use crate::spec::validate_container_id;
use crate::spec::ChannelSpec;

/// Runs a parsed command line: the command, then its report or error on stdout or stderr in the
/// format asked for, and the exit code.
pub fn main(cli: Cli) -> ExitCode {
    crate::logging::init(cli.verbose);
    let config = ConfigSource {
        path: cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH)),
        named: cli.config.is_some(),
    };
    let unit = own_unit(&cli.command);
    if let Command::Nri(args) = cli.command {
        // A service, not a command: it logs, and says nothing on stdout.
        let metrics_listen = args
            .metrics_listen
            .as_deref()
            .map(crate::nri::MetricsAddress::parse)
            .transpose();
        let ran = metrics_listen.and_then(|metrics_listen| {
            let args = crate::nri::NriArgs {
                socket: args.socket,
                name: args.name,
                index: args.index,
                request_timeout: args.request_timeout,
                metrics_listen,
                metrics_textfile: args.metrics_textfile,
            };
            crate::nri::run(&args, &current_binary(), &config.path, config.named)
        });
        return match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(target: crate::logging::FAILURE, "{err}");
                write_at_once(std::io::stderr(), &format!("hostchan: {err}\n"));
                ExitCode::from(err.exit_code() as u8)
            }
        };
    }
    let result = run(cli.command, &config);
    match result {
        Ok(report) => {
            match cli.output {
                OutputFormat::Json => emit(&format!("{}\n", report.json())),
                OutputFormat::Text => emit(&report.text()),
            }
            // The process ends here: freeing a list of thousands of channels one allocation
            // at a time would only make it end later.
            std::mem::forget(report);
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::debug!("failed: {err:?}");
            // Into the journal as well: a runtime such as crun shows a hook's exit code but
            // not its stderr.
            match &unit {
                Some(unit) => {
                    tracing::error!(target: crate::logging::FAILURE, OBJECT_SYSTEMD_UNIT = %unit, "{err}")
                }
                None => tracing::error!(target: crate::logging::FAILURE, "{err}"),
            }
            match cli.output {
                OutputFormat::Json => emit(&format!("{}\n", err.json())),
                OutputFormat::Text => {
                    write_at_once(std::io::stderr(), &format!("hostchan: {err}\n"))
                }
            }
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// Where the configuration comes from; read only by the commands that use it, so that a broken
/// file never stops `delete`, `gc` or a cleanup unit.
struct ConfigSource {
    path: PathBuf,
    named: bool,
}

impl ConfigSource {
    fn load(&self) -> Result<Config> {
        Config::load(&self.path, self.named)
    }
}

fn run(command: Command, config: &ConfigSource) -> Result<Report> {
    let channels = Channels::new(current_binary());
    match command {
        Command::Create(args) => {
            let config = config.load()?;
            // What needs nothing from the machine comes first: a bad spec is named as such,
            // never hidden behind a missing owner or an unreachable systemd.
            let spec = ChannelSpec::parse(&args.spec, &config.limits())?;
            config.check_host_path(&spec.host_path, &AskedBy::Cli)?;
            if let Some(container) = &args.container {
                validate_container_id(container)?;
            }
            let request = match (&args.scope, args.unbound, args.pid) {
                (Some(unit), _, _) => AskedOwner::Unit(unit.clone()),
                (None, true, _) => AskedOwner::Unbound,
                (None, false, Some(pid)) => AskedOwner::Pid(pid),
                (None, false, None) => AskedOwner::Default,
            };
            let root_owner = args
                .root_owner
                .as_deref()
                .map(crate::spec::parse_root_owner)
                .transpose()?;
            let ask = Ask {
                owner: request,
                container: args.container,
                pod: None,
                lifetime: args.lifetime,
                given: Given {
                    root_owner,
                    attach: args.pid.map(|pid| AttachTo { pid, rootfs: None }),
                    grow_memory_limit: args.grow_memory_limit,
                    dry_run: args.dry_run,
                    ..Given::by(AskedBy::Cli)
                },
            };
            let options = CreateOptions::new(&config, spec, ask)?;
            channels.create(&config, &options).map(Report::Created)
        }
        Command::Delete {
            channel: Some(channel),
            ..
        } => channels
            .delete(&Target::parse(&channel)?)
            .map(Report::Deleted),
        Command::Delete {
            container: Some(id),
            ..
        } => channels
            .delete_container(&validate_container_id(&id)?)
            .map(|deleted| Report::DeletedContainer {
                container: id,
                deleted,
            }),
        Command::Delete { .. } => unreachable!("clap requires a channel or --container"),
        Command::List => channels.list().map(|channels| {
            Report::List(Listing {
                channels,
                node_budget: node_budget(config),
            })
        }),
        Command::Metrics => {
            crate::metrics::of_node(&channels, node_budget(config)).map(Report::Metrics)
        }
        Command::Status { channel } => channels
            .status(&Target::parse(&channel)?)
            .map(Report::Status),
        Command::OciHook {
            stage,
            engine_deletes,
        } => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the OCI state on stdin")?;
            let input = String::from_utf8(bytes).map_err(|e| {
                Error::usage("the OCI state on stdin is not UTF-8 JSON").caused_by(e)
            })?;
            let state = oci::ContainerState::parse(&input)?;
            let stage = state.stage(stage)?;
            oci::run_hook(&channels, &|| config.load(), &state, stage, engine_deletes)
                .map(Report::Hook)
        }
        Command::Gc {
            dry_run,
            offline,
            no_wait,
            linger,
        } => channels
            .gc(crate::channel::Gc {
                dry_run,
                offline,
                no_wait,
                linger: linger.map(std::time::Duration::from_secs),
            })
            .map(|leftovers| Report::Gc { dry_run, leftovers }),
        Command::Config(ConfigCommand::Check) => {
            let loaded = config.load()?;
            Ok(Report::ConfigChecked {
                config: loaded.source,
                valid: true,
            })
        }
        Command::Config(ConfigCommand::Show) => config.load().map(Report::Config),
        Command::CdiSpec { hostchan } => Ok(Report::CdiSpec(crate::cdi::spec(&hostchan))),
        Command::Cleanup { id, host_path } => channels
            .cleanup(std::path::Path::new(&host_path), &id)
            .map(Report::Cleanup),
        Command::Nri(_) => unreachable!("run as a service above"),
    }
}

/// `node.max_total_size` in bytes, as `list` and `metrics` show it: a configuration that
/// cannot be read keeps nobody from looking at the channels.
fn node_budget(config: &ConfigSource) -> Option<u64> {
    config
        .load()
        .ok()
        .map(|loaded| loaded.node.effective_max_total_size)
}

/// The unit this process runs as, when it is one of hostchan's own (the cleanup unit's
/// `ExecStop=`): its failure line names that unit itself (`journalctl -u` reads
/// OBJECT_SYSTEMD_UNIT of root's lines), because journald can only attribute a line to the
/// sender's unit while the sender still lives, and under load it reads the line after the
/// cleanup has exited.
fn own_unit(command: &Command) -> Option<String> {
    let Command::Cleanup { host_path, .. } = command else {
        return None;
    };
    let path = crate::spec::normalize_absolute("host path", host_path).ok()?;
    Some(crate::unit_name::cleanup_unit_name(
        &crate::unit_name::mount_unit_name(&path),
    ))
}

/// clap's own errors: help and version print as usual; anything else is bad usage (exit 2), as
/// `{"error": ...}` on stdout when JSON output was asked for.
pub fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    // args_os: std::env::args panics on an argument that is not UTF-8, which Linux allows.
    if json_requested(std::env::args_os().map(|a| a.to_string_lossy().into_owned())) {
        let error = Error::usage(first_line(&err.to_string()));
        emit(&format!("{}\n", error.json()));
        return ExitCode::from(EXIT_USAGE as u8);
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
    } else {
        write_at_once(
            std::io::stderr(),
            &format!(
                "hostchan: {}; see: hostchan --help\n",
                first_line(&err.to_string())
            ),
        );
    }
    ExitCode::from(EXIT_USAGE as u8)
}

/// clap's message without its usage block, on one line, cut as hostchan's own quotes are (clap
/// quotes a bad argument whole, and one argument may be 128 KiB).
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let (head, note) = cut(line.trim_start_matches("error: "), 4 * QUOTE_LIMIT);
    format!("{head}{note}")
}

fn json_requested(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.windows(2)
        .any(|pair| pair[0] == "--output" && pair[1] == "json")
        || args.iter().any(|a| a == "--output=json")
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    write_at_once(std::io::stdout().lock(), text);
}

/// Where the hostchan binary that creates a channel lives, for the cleanup unit to run later.
fn current_binary() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/hostchan"))
}
