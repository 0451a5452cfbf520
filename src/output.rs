//! How results look: text for people, JSON for engines.

use std::fmt::Write;

use serde::Serialize;

use crate::channel::{ChannelInfo, Cleanup, Created, Leftover, LeftoverOutcome};
use crate::config::Config;
use crate::oci::HookOutcome;
use crate::spec::format_size;
use crate::units::{ChannelUnits, PropertyValue, TransientUnit};

/// Every channel, and the node's budget for them (`node.max_total_size` in bytes) when the
/// configuration could be read. JSON: the channels alone, an array, as it has always been.
#[derive(Debug)]
pub struct Listing {
    pub channels: Vec<ChannelInfo>,
    pub node_budget: Option<u64>,
}

impl Serialize for Listing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.channels.serialize(serializer)
    }
}

/// A command's result, ready to print in either format.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Created(Created),
    Deleted(ChannelInfo),
    List(Listing),
    Status(ChannelInfo),
    Cleanup(Cleanup),
    Hook(HookOutcome),
    DeletedContainer {
        container: String,
        deleted: Vec<ChannelInfo>,
    },
    Gc {
        dry_run: bool,
        leftovers: Vec<Leftover>,
    },
    /// Prometheus's text format, printed as it is.
    Metrics(String),
    ConfigChecked {
        /// `None`: there is no file and the built-in defaults apply.
        config: Option<std::path::PathBuf>,
        valid: bool,
    },
    Config(Config),
    /// Printed as JSON whatever the output format: it is a file to install.
    CdiSpec(serde_json::Value),
}

impl Report {
    fn json_of(&self, value: &serde_json::Value) -> String {
        serde_json::to_string_pretty(value).unwrap_or_default()
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            crate::error::Error::io("cannot show the result", e)
                .json()
                .to_string()
        })
    }

    pub fn text(&self) -> String {
        match self {
            Report::Created(Created::DryRun(units)) => dry_run_text(units),
            Report::Created(Created::Channel(info) | Created::Existing(info)) => {
                let mut text = format!(
                    "Created channel {} ({}): {} tmpfs, container path {} ({}), {}\n",
                    info.channel.spec.host_path.display(),
                    info.channel.unit,
                    format_size(info.channel.spec.size),
                    info.channel.spec.container_path.display(),
                    info.channel.spec.access,
                    owner_text(info)
                );
                if let Some(change) = &info.memory_limit {
                    let _ = writeln!(
                        text,
                        "Raised {} of {} from {} to {} bytes",
                        change.property, change.unit, change.from, change.to
                    );
                }
                text
            }
            Report::Deleted(info) => format!(
                "Deleted channel {} ({})\n",
                info.channel.spec.host_path.display(),
                info.channel.unit
            ),
            Report::List(listing) => list_text(listing),
            Report::Status(info) => status_text(info),
            Report::Hook(hook) => {
                let mut text = String::new();
                for channel in &hook.channels {
                    let verb = if hook.stage == crate::oci::Stage::Poststop {
                        "Deleted"
                    } else {
                        "Created"
                    };
                    let _ = writeln!(
                        text,
                        "{verb} channel {} -> {} for container {}",
                        channel.channel.spec.host_path.display(),
                        channel.channel.spec.container_path.display(),
                        hook.container
                    );
                }
                text
            }
            Report::DeletedContainer { container, deleted } => {
                if deleted.is_empty() {
                    return format!(
                        "Container {container} has no channels; nothing was deleted.\n"
                    );
                }
                let mut text = String::new();
                for info in deleted {
                    let _ = writeln!(
                        text,
                        "Deleted channel {} ({}) of container {container}",
                        info.channel.spec.host_path.display(),
                        info.channel.unit
                    );
                }
                text
            }
            Report::Gc { dry_run, leftovers } => gc_text(*dry_run, leftovers),
            Report::Metrics(text) => text.clone(),
            Report::ConfigChecked { config, .. } => match config {
                Some(path) => format!("{}: valid\n", path.display()),
                None => format!(
                    "No configuration file at {}; the built-in defaults apply.\n",
                    crate::config::DEFAULT_PATH
                ),
            },
            Report::Config(config) => config.to_toml(),
            Report::CdiSpec(spec) => format!("{}\n", self.json_of(spec)),
            Report::Cleanup(cleanup) => format!(
                "Cleaned up channel {}{}\n",
                cleanup.host_path.display(),
                if cleanup.removed_directory {
                    " (directory removed)"
                } else {
                    ""
                }
            ),
        }
    }
}

fn owner_text(info: &ChannelInfo) -> String {
    match &info.channel.owner {
        Some(owner) => format!("bound to {owner}"),
        None => "unbound (lives until hostchan delete)".to_owned(),
    }
}

fn dry_run_text(units: &ChannelUnits) -> String {
    let mut out = String::new();
    for unit in units.all() {
        unit_text(&mut out, unit);
    }
    out
}

fn unit_text(out: &mut String, unit: &TransientUnit) {
    let _ = writeln!(out, "# {}", unit.name);
    for property in &unit.properties {
        let value = match &property.value {
            PropertyValue::Str(s) => s.clone(),
            PropertyValue::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
            PropertyValue::StrList(items) => items.join(" "),
            PropertyValue::Commands(commands) => commands
                .iter()
                .map(|c| {
                    let prefix = if c.ignore_failure { "-" } else { "" };
                    format!("{prefix}{} {}", c.path, c.argv[1..].join(" "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        let _ = writeln!(out, "{}={value}", property.name);
    }
    out.push('\n');
}

fn gc_text(dry_run: bool, leftovers: &[Leftover]) -> String {
    if leftovers.is_empty() {
        return "No leftovers: every channel hostchan has a record of is mounted.\n".to_owned();
    }
    let mut text = String::new();
    for leftover in leftovers {
        let path = leftover.channel.spec.host_path.display();
        let _ = match &leftover.outcome {
            LeftoverOutcome::WouldRemove => writeln!(
                text,
                "Would remove leftover channel {path} ({}): its directory if empty, and its record",
                leftover.channel.unit
            ),
            LeftoverOutcome::Removed { directory: true } => {
                writeln!(
                    text,
                    "Removed leftover channel {path}: directory and record"
                )
            }
            LeftoverOutcome::Removed { directory: false } => writeln!(
                text,
                "Removed leftover channel {path}: record (the directory was already gone)"
            ),
            LeftoverOutcome::Kept { reason } => writeln!(text, "Kept {path}: {reason}"),
            LeftoverOutcome::WouldExpire => writeln!(
                text,
                "Would delete idle channel {path} ({}): its container was not seen within the idle limit",
                leftover.channel.unit
            ),
            LeftoverOutcome::Expired => writeln!(
                text,
                "Deleted idle channel {path}: its container was not seen within the idle limit"
            ),
        };
    }
    if dry_run {
        text.push_str("Nothing was removed (--dry-run).\n");
    }
    text
}

fn used_text(info: &ChannelInfo) -> String {
    info.used.map_or_else(|| "-".to_owned(), format_size)
}

/// A size for a person to read: exact when it is a whole number of a unit, else to a tenth of
/// the largest unit it reaches (half of a machine's memory is seldom round).
fn rounded_size(bytes: u64) -> String {
    let exact = format_size(bytes);
    if !exact.ends_with('B') && exact.len() <= 5 {
        return exact;
    }
    for (unit, name) in [
        (1u64 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ] {
        if bytes >= unit {
            return format!("{:.1}{name}", bytes as f64 / unit as f64);
        }
    }
    exact
}

fn list_text(listing: &Listing) -> String {
    let channels = &listing.channels;
    if channels.is_empty() {
        return "No channels.\n".to_owned();
    }
    let header = [
        "HOST PATH",
        "CONTAINER PATH",
        "MODE",
        "SIZE",
        "USED",
        "OWNER",
        "STATE",
    ];
    let rows: Vec<[String; 7]> = channels
        .iter()
        .map(|c| {
            [
                c.channel.spec.host_path.display().to_string(),
                c.channel.spec.container_path.display().to_string(),
                c.channel.spec.access.to_string(),
                format_size(c.channel.spec.size),
                used_text(c),
                c.channel.owner.clone().unwrap_or_else(|| "-".to_owned()),
                state_text(c),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line_width: usize = widths.iter().map(|w| w + 2).sum();
    let mut out = String::with_capacity((rows.len() + 1) * line_width);
    let mut line = |cells: &[&str]| {
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    let size: u64 = channels.iter().map(|c| c.channel.spec.size).sum();
    let used: u64 = channels.iter().filter_map(|c| c.used).sum();
    let _ = write!(
        out,
        "{} channel{}, {} in all, {} used",
        channels.len(),
        if channels.len() == 1 { "" } else { "s" },
        format_size(size),
        format_size(used)
    );
    match listing.node_budget {
        Some(budget) => {
            let _ = writeln!(
                out,
                "; the node's budget (node.max_total_size) {}, {} left",
                rounded_size(budget),
                rounded_size(budget.saturating_sub(size))
            );
        }
        None => out.push('\n'),
    }
    out
}

fn state_text(info: &ChannelInfo) -> String {
    if info.sub_state.is_empty() {
        info.state.to_string()
    } else {
        format!("{} ({})", info.state, info.sub_state)
    }
}

fn status_text(info: &ChannelInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} - host channel",
        info.channel.spec.host_path.display()
    );
    let _ = writeln!(out, "      Unit: {}", info.channel.unit);
    let _ = writeln!(out, "     State: {}", state_text(info));
    let _ = writeln!(
        out,
        " Container: {} ({}){}",
        info.channel.spec.container_path.display(),
        info.channel.spec.access,
        info.channel
            .container
            .as_deref()
            .map(|id| format!(" in container {id}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "      Size: {} ({} bytes), used {}",
        format_size(info.channel.spec.size),
        info.channel.spec.size,
        used_text(info)
    );
    let _ = writeln!(out, "     Owner: {}", owner_text(info));
    let _ = match &info.channel.cleanup_unit {
        Some(unit) => writeln!(out, "   Cleanup: {unit}"),
        None => writeln!(
            out,
            "   Cleanup: by systemd when {} stops (RuntimeDirectory=), the record by {}",
            info.channel.unit,
            crate::units::PRUNE_UNIT
        ),
    };
    let _ = writeln!(
        out,
        "   Created: {} (seconds since the epoch)",
        info.channel.created
    );
    if info.state == crate::model::ChannelState::Gone {
        let _ = writeln!(
            out,
            "      Note: systemd no longer has this channel (a crash or reboot?); remove the leftovers with: hostchan delete {}",
            info.channel.spec.host_path.display()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tests::channel, ChannelState};

    fn info(
        host_path: &str,
        owner: Option<&str>,
        state: ChannelState,
        used: Option<u64>,
    ) -> ChannelInfo {
        ChannelInfo {
            channel: channel(host_path, owner),
            used,
            sub_state: if state == ChannelState::Active {
                "mounted".into()
            } else {
                String::new()
            },
            state,
            memory_limit: None,
        }
    }

    #[test]
    fn sizes_for_people_are_exact_when_round() {
        assert_eq!(rounded_size(3 << 20), "3M");
        assert_eq!(rounded_size(12_341_886 << 10), "11.8G");
        assert_eq!(rounded_size(1536), "1.5K");
        assert_eq!(rounded_size(100), "100B");
    }

    #[test]
    fn list_is_a_table_with_aligned_columns() {
        let report = Report::List(Listing {
            channels: vec![
                info(
                    "/run/chan/web",
                    Some("libpod-1.scope"),
                    ChannelState::Active,
                    Some(8192),
                ),
                info("/run/c2", None, ChannelState::Gone, None),
            ],
            node_budget: Some(4 << 20),
        });
        assert_eq!(
            report.text(),
            "\
HOST PATH      CONTAINER PATH  MODE  SIZE  USED  OWNER           STATE
/run/chan/web  /chan           rw    1M    8K    libpod-1.scope  active (mounted)
/run/c2        /chan           rw    1M    -     -               gone
2 channels, 2M in all, 8K used; the node's budget (node.max_total_size) 4M, 2M left
"
        );
        assert_eq!(
            Report::List(Listing {
                channels: Vec::new(),
                node_budget: None
            })
            .text(),
            "No channels.\n"
        );
    }

    #[test]
    fn json_is_flat_and_typed() {
        let report = Report::Status(info("/run/c2", None, ChannelState::Gone, None));
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["host_path"], "/run/c2");
        assert_eq!(json["mode"], "rw");
        assert_eq!(json["size"], 1 << 20);
        assert_eq!(json["state"], "gone");
        assert_eq!(json["unit"], "run-c2.mount");
        assert_eq!(json["container"], "c0ffee");
        assert!(json.get("owner").is_none(), "{json}");
        assert!(json["used"].is_null(), "{json}");
    }

    #[test]
    fn status_of_a_leftover_says_what_to_do() {
        let text = Report::Status(info("/run/c2", None, ChannelState::Gone, None)).text();
        assert!(
            text.starts_with(
                "/run/c2 - host channel\n      Unit: run-c2.mount\n     State: gone\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Owner: unbound (lives until hostchan delete)"),
            "{text}"
        );
        assert!(
            text.contains("remove the leftovers with: hostchan delete /run/c2"),
            "{text}"
        );
        let live = Report::Status(info(
            "/run/c3",
            Some("x.scope"),
            ChannelState::Active,
            Some(0),
        ))
        .text();
        assert!(live.contains("State: active (mounted)"), "{live}");
        assert!(!live.contains("Note:"), "{live}");
    }

    #[test]
    fn gc_says_what_it_did_to_each() {
        let leftover = |path: &str, outcome| Leftover {
            channel: channel(path, None),
            outcome,
        };
        let report = Report::Gc {
            dry_run: false,
            leftovers: vec![
                leftover("/run/a", LeftoverOutcome::Removed { directory: true }),
                leftover("/run/b", LeftoverOutcome::Removed { directory: false }),
                leftover(
                    "/run/c",
                    LeftoverOutcome::Kept {
                        reason: "not empty".into(),
                    },
                ),
            ],
        };
        assert_eq!(
            report.text(),
            "\
Removed leftover channel /run/a: directory and record
Removed leftover channel /run/b: record (the directory was already gone)
Kept /run/c: not empty
"
        );
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["leftovers"][2]["outcome"], "kept");
        assert_eq!(json["leftovers"][2]["reason"], "not empty");
        assert_eq!(json["leftovers"][0]["host_path"], "/run/a");
        let dry = Report::Gc {
            dry_run: true,
            leftovers: vec![leftover("/run/a", LeftoverOutcome::WouldRemove)],
        };
        assert!(dry.text().ends_with("Nothing was removed (--dry-run).\n"));
        let none = Report::Gc {
            dry_run: false,
            leftovers: vec![],
        };
        assert!(none.text().starts_with("No leftovers"));
    }

    #[test]
    fn hook_reports_name_the_stage() {
        let hook = |stage| {
            Report::Hook(crate::oci::HookOutcome {
                stage,
                container: "c0ffee".into(),
                channels: vec![info("/run/h", Some("x.scope"), ChannelState::Active, None)],
            })
        };
        assert_eq!(
            hook(crate::oci::Stage::Prestart).text(),
            "Created channel /run/h -> /chan for container c0ffee\n"
        );
        assert_eq!(
            hook(crate::oci::Stage::Poststop).text(),
            "Deleted channel /run/h -> /chan for container c0ffee\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&hook(crate::oci::Stage::CreateRuntime).json()).unwrap();
        assert_eq!(json["stage"], "createRuntime");
    }
}
