//! `hostchan metrics`: the node's channels in Prometheus's text exposition format (0.0.4), for
//! a scrape or node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::channel::{ChannelInfo, Channels};
use crate::error::Result;
use crate::hostfs::FsUsage;

/// The metrics of the node's channels now (`hostchan metrics`, and the first part of what the
/// NRI plugin serves), against the node's budget in bytes when known.
pub fn of_node(channels: &Channels, node_budget: Option<u64>) -> Result<String> {
    let listed = channels.list()?;
    let mut usage = crate::hostfs::Usage::default();
    Ok(render(&listed, &mut |path| usage.of(path), node_budget))
}

/// The metrics of `channels`: how many there are by state and lifetime, each one's size and
/// what its tmpfs has in use (`usage`, asked only of mounted channels), and the node's total
/// against its budget (`node.max_total_size` in bytes) when known.
pub fn render(
    channels: &[ChannelInfo],
    usage: &mut dyn FnMut(&Path) -> Option<FsUsage>,
    node_budget: Option<u64>,
) -> String {
    let mut out = String::new();
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for info in channels {
        *by_state
            .entry((info.state.to_string(), info.channel.lifetime.to_string()))
            .or_default() += 1;
    }
    family(
        &mut out,
        "hostchan_channels",
        "Channels on the node, by the state of their mount unit and their lifetime.",
    );
    for ((state, lifetime), count) in &by_state {
        let _ = writeln!(
            out,
            "hostchan_channels{{state=\"{}\",lifetime=\"{}\"}} {count}",
            escape(state),
            escape(lifetime)
        );
    }

    let mut sizes = String::new();
    let mut used = String::new();
    let mut inodes_used = String::new();
    let mut inodes_total = String::new();
    for info in channels {
        let labels = format!(
            "unit=\"{}\",host_path=\"{}\",container=\"{}\"",
            escape(&info.channel.unit),
            escape(&info.channel.spec.host_path.display().to_string()),
            escape(info.channel.container.as_deref().unwrap_or_default())
        );
        let _ = writeln!(
            sizes,
            "hostchan_channel_size_bytes{{{labels}}} {}",
            info.channel.spec.size
        );
        if info.used.is_none() {
            continue;
        }
        if let Some(now) = usage(&info.channel.spec.host_path) {
            let _ = writeln!(
                used,
                "hostchan_channel_used_bytes{{{labels}}} {}",
                now.used_bytes
            );
            let _ = writeln!(
                inodes_used,
                "hostchan_channel_inodes_used{{{labels}}} {}",
                now.inodes_used
            );
            let _ = writeln!(
                inodes_total,
                "hostchan_channel_inodes{{{labels}}} {}",
                now.inodes_total
            );
        }
    }
    for (name, help, samples) in [
        (
            "hostchan_channel_size_bytes",
            "The size of a channel's tmpfs (its size= option).",
            &sizes,
        ),
        (
            "hostchan_channel_used_bytes",
            "Bytes in use in a mounted channel's tmpfs (statfs).",
            &used,
        ),
        (
            "hostchan_channel_inodes_used",
            "Inodes in use in a mounted channel's tmpfs (statfs).",
            &inodes_used,
        ),
        (
            "hostchan_channel_inodes",
            "Inodes a mounted channel's tmpfs has (statfs).",
            &inodes_total,
        ),
    ] {
        family(&mut out, name, help);
        out.push_str(samples);
    }

    let total: u64 = channels.iter().map(|info| info.channel.spec.size).sum();
    family(
        &mut out,
        "hostchan_node_channels_size_bytes",
        "The sizes of all channels on the node together.",
    );
    let _ = writeln!(out, "hostchan_node_channels_size_bytes {total}");
    if let Some(budget) = node_budget {
        family(
            &mut out,
            "hostchan_node_budget_bytes",
            "node.max_total_size: what all channels on the node may come to together.",
        );
        let _ = writeln!(out, "hostchan_node_budget_bytes {budget}");
    }
    out
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tests::channel, ChannelState};

    fn info(host_path: &str, state: ChannelState, used: Option<u64>) -> ChannelInfo {
        ChannelInfo {
            channel: channel(host_path, Some("ctr.scope")),
            used,
            state,
            sub_state: String::new(),
            memory_limit: None,
        }
    }

    #[test]
    fn channels_in_the_text_format() {
        let channels = [
            info("/run/a", ChannelState::Active, Some(8192)),
            info("/run/b \"q\"\\", ChannelState::Gone, None),
        ];
        let mut asked = Vec::new();
        let text = render(
            &channels,
            &mut |path| {
                asked.push(path.to_owned());
                Some(FsUsage {
                    used_bytes: 8192,
                    inodes_used: 3,
                    inodes_total: 100,
                })
            },
            Some(4 << 20),
        );
        // Only the mounted channel's tmpfs is looked at.
        assert_eq!(asked, [std::path::PathBuf::from("/run/a")]);
        assert!(
            text.contains("hostchan_channels{state=\"active\",lifetime=\"stop\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hostchan_channels{state=\"gone\",lifetime=\"stop\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "hostchan_channel_used_bytes{unit=\"run-a.mount\",host_path=\"/run/a\",container=\"c0ffee\"} 8192\n"
        ), "{text}");
        assert!(
            text.contains("host_path=\"/run/b \\\"q\\\"\\\\\""),
            "{text}"
        );
        assert!(
            text.contains("hostchan_channel_inodes_used{unit=\"run-a.mount\""),
            "{text}"
        );
        assert!(
            text.contains("hostchan_node_channels_size_bytes 2097152\n"),
            "{text}"
        );
        assert!(
            text.contains("hostchan_node_budget_bytes 4194304\n"),
            "{text}"
        );
        // Every family is declared once, before its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }
}
