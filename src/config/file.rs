//! Reading config.toml: the file's own shape, every mistake reported with the file, line and
//! key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::machine::Machine;
use super::{
    Config, DefaultOwner, DeleteLifetime, Hook, MaxSize, Node, OwnerPolicy, Tenancy, Tmpfs,
    MAX_PERCENT_OF_MEMORY,
};
use crate::error::{Error, Result};
use crate::model::Lifetime;
use crate::spec::{self, format_size};

impl Config {
    pub fn parse(text: &str, origin: &Path, machine: &Machine) -> Result<Config> {
        let file: File = toml::from_str(text).map_err(|e| syntax_error(&e, text, origin))?;
        let at = |span: std::ops::Range<usize>, key: &str| Location {
            origin,
            line: line_of(text, span.start),
            key: key.to_owned(),
        };
        let mut config = Config::builtin(machine);
        config.source = Some(origin.to_owned());

        if let Some(max) = &file.channels.max_size {
            let location = at(max.span(), "channels.max_size");
            let (max_size, effective) = max_size_of(max.get_ref(), &location, machine)?;
            config.channels.effective_max_size = effective;
            config.channels.max_size = max_size;
        }

        if let Some(default) = &file.channels.default_size {
            let location = at(default.span(), "channels.default_size");
            let bytes = default.get_ref().bytes(&location)?;
            let shown = default.get_ref().to_string();
            if bytes < machine.page_size {
                return Err(location.error(
                    &shown,
                    format!("is below one page ({} bytes)", machine.page_size),
                ));
            }
            if bytes > config.channels.effective_max_size {
                return Err(location.error(
                    &shown,
                    format!(
                        "is above the maximum size on this machine ({}); lower it or raise channels.max_size",
                        format_size(config.channels.effective_max_size)
                    ),
                ));
            }
            config.channels.default_size = bytes;
        } else if config.channels.default_size > config.channels.effective_max_size {
            config.channels.default_size = config.channels.effective_max_size;
        }

        if let Some(roots) = &file.channels.allowed_roots {
            let location = at(roots.span(), "channels.allowed_roots");
            config.channels.allowed_roots = parse_roots(roots.get_ref(), &location)?;
        }
        if let Some(lifetime) = file.channels.lifetime {
            config.channels.lifetime = lifetime;
        }
        if let Some(check) = file.channels.check_available_memory {
            config.channels.check_available_memory = check;
        }
        if let Some(limit) = &file.channels.idle_limit {
            let location = at(limit.span(), "channels.idle_limit");
            config.channels.idle_limit = parse_duration(limit.get_ref()).ok_or_else(|| {
                location.error(
                    limit.get_ref(),
                    "is not a duration such as \"7d\", \"12h\", \"30m\" or \"0\" (never)",
                )
            })?;
        }
        if let Some(roots) = &file.hook.allowed_roots {
            let location = at(roots.span(), "hook.allowed_roots");
            if roots.get_ref().is_empty() {
                return Err(location.error(
                    "[]",
                    "would let container annotations pick any host path; name the roots hook channels may use",
                ));
            }
            config.hook.allowed_roots = parse_roots(roots.get_ref(), &location)?;
        }
        if let Some(tenancy) = file.hook.tenancy {
            config.hook.tenancy = tenancy;
        }
        if let Some(delete) = file.hook.delete_lifetime {
            config.hook.delete_lifetime = delete;
        }
        let counts = [
            (
                &file.hook.max_channels_per_container,
                "hook.max_channels_per_container",
                "set hook.allowed_roots to where channels may go instead",
                &mut config.hook.max_channels_per_container,
            ),
            (
                &file.hook.max_path_depth,
                "hook.max_path_depth",
                "give the most directories a host path from an annotation may have",
                &mut config.hook.max_path_depth,
            ),
            (
                &file.hook.max_path_length,
                "hook.max_path_length",
                "give the most bytes a host path from an annotation may have",
                &mut config.hook.max_path_length,
            ),
        ];
        for (given, key, instead, value) in counts {
            let Some(given) = given else { continue };
            if *given.get_ref() == 0 {
                return Err(at(given.span(), key)
                    .error("0", format!("would refuse every annotation; {instead}")));
            }
            *value = *given.get_ref();
        }
        if let Some(max) = &file.node.max_total_size {
            let location = at(max.span(), "node.max_total_size");
            let (max_size, effective) = max_size_of(max.get_ref(), &location, machine)?;
            config.node.max_total_size = max_size;
            config.node.effective_max_total_size = effective;
        }
        if let Some(max) = &file.hook.max_total_size {
            let location = at(max.span(), "hook.max_total_size");
            let (max_size, effective) = max_size_of(max.get_ref(), &location, machine)?;
            config.hook.max_total_size = max_size;
            config.hook.effective_max_total_size = effective;
        }

        if let Some(noexec) = file.tmpfs.noexec {
            config.tmpfs.noexec = noexec;
        }
        if let Some(inodes) = &file.tmpfs.nr_inodes {
            let location = at(inodes.span(), "tmpfs.nr_inodes");
            let value = *inodes.get_ref();
            // 0 means unlimited to the kernel, which is the opposite of what anyone setting
            // the key wants; a channel needs at least a few files to be useful.
            if value < 2 {
                return Err(location.error(
                    &value.to_string(),
                    "must be at least 2 (the kernel reads 0 as unlimited); leave the key out for the kernel's default",
                ));
            }
            config.tmpfs.nr_inodes = Some(value);
        }

        if let Some(allow) = file.owner.allow_unbound {
            config.owner.allow_unbound = allow;
        }
        if let Some(default) = &file.owner.default {
            config.owner.default = *default.get_ref();
            if config.owner.default == DefaultOwner::Unbound && !config.owner.allow_unbound {
                return Err(at(default.span(), "owner.default").error(
                    "unbound",
                    "contradicts owner.allow_unbound = false; choose \"require\" or allow unbound channels",
                ));
            }
        }
        Ok(config)
    }

    /// The effective configuration as a TOML file an operator could install as is.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "# Effective hostchan configuration, from {}.\n",
            self.origin()
        );
        text.push_str(&format!(
            "# channels.max_size comes to {} bytes ({}) on this machine.\n",
            self.channels.effective_max_size,
            format_size(self.channels.effective_max_size)
        ));
        let file = FileOut::from(self);
        text.push_str(&toml::to_string(&file).unwrap_or_default());
        text
    }
}

/// A maximum as written (`"25%"` of the physical memory, or bytes) and what it comes to on this
/// machine: never above half of the memory, never below one page.
fn max_size_of(
    value: &SizeValue,
    location: &Location<'_>,
    machine: &Machine,
) -> Result<(MaxSize, u64)> {
    let max_size = match value {
        SizeValue::Text(text) if text.trim_end().ends_with('%') => {
            let number = text.trim_end().trim_end_matches('%').trim();
            let percent: u64 = number
                .parse()
                .map_err(|_| location.error(text, "is not a whole percentage such as \"25%\""))?;
            if percent == 0 || percent > MAX_PERCENT_OF_MEMORY {
                return Err(location.error(
                    text,
                    "must be between 1% and 50%: a channel is never allowed above half of the physical memory",
                ));
            }
            MaxSize::PercentOfMemory(percent)
        }
        value => MaxSize::Bytes(value.bytes(location)?),
    };
    let effective = match max_size {
        MaxSize::Bytes(bytes) => bytes.min(machine.mem_total / 2),
        MaxSize::PercentOfMemory(percent) => {
            (u128::from(machine.mem_total) * u128::from(percent) / 100) as u64
        }
    };
    if effective < machine.page_size {
        return Err(location.error(
            &max_size.to_string(),
            format!("is below one page ({} bytes)", machine.page_size),
        ));
    }
    Ok((max_size, effective))
}

/// `7d`, `12h`, `30m`, `45s` or a number of seconds, in seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(seconds)
}

/// A duration as the configuration writes it.
pub fn format_duration(seconds: u64) -> String {
    match seconds {
        0 => "0".to_owned(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn parse_roots(roots: &[String], location: &Location<'_>) -> Result<Vec<PathBuf>> {
    let mut parsed = Vec::new();
    for root in roots {
        let path = spec::normalize_absolute("allowed root", root)
            .map_err(|e| location.error(root, strip_invalid_prefix(&e)))?;
        if let Some(tree) = spec::protected_tree(&path) {
            return Err(location.error(
                root,
                format!("is inside {tree}, which stays protected whatever the configuration says"),
            ));
        }
        if path == Path::new("/") {
            return Err(location.error(
                root,
                "would allow everything; leave allowed_roots out (or empty) for that",
            ));
        }
        parsed.push(path);
    }
    Ok(parsed)
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    channels: ChannelsIn,
    tmpfs: TmpfsIn,
    owner: OwnerIn,
    hook: HookIn,
    node: NodeIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NodeIn {
    max_total_size: Option<Spanned<SizeValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HookIn {
    allowed_roots: Option<Spanned<Vec<String>>>,
    tenancy: Option<Tenancy>,
    delete_lifetime: Option<DeleteLifetime>,
    max_channels_per_container: Option<Spanned<usize>>,
    max_total_size: Option<Spanned<SizeValue>>,
    max_path_depth: Option<Spanned<usize>>,
    max_path_length: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ChannelsIn {
    default_size: Option<Spanned<SizeValue>>,
    max_size: Option<Spanned<SizeValue>>,
    allowed_roots: Option<Spanned<Vec<String>>>,
    lifetime: Option<Lifetime>,
    idle_limit: Option<Spanned<String>>,
    check_available_memory: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TmpfsIn {
    noexec: Option<bool>,
    nr_inodes: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OwnerIn {
    default: Option<Spanned<DefaultOwner>>,
    allow_unbound: Option<bool>,
}

/// A size as bytes (`67108864`) or text (`"64M"`, `"1.5g"`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl fmt::Display for SizeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeValue::Bytes(bytes) => write!(f, "{bytes}"),
            SizeValue::Text(text) => f.write_str(text),
        }
    }
}

impl SizeValue {
    fn bytes(&self, location: &Location<'_>) -> Result<u64> {
        match self {
            SizeValue::Bytes(bytes) => Ok(*bytes),
            SizeValue::Text(text) => {
                spec::parse_size(text).map_err(|e| location.error(text, strip_invalid_prefix(&e)))
            }
        }
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"64M\" or \"25%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The effective configuration in the file's own shape, for `config show`.
#[derive(Serialize)]
struct FileOut {
    channels: ChannelsOut,
    tmpfs: Tmpfs,
    owner: OwnerPolicy,
    hook: Hook,
    node: Node,
}

#[derive(Serialize)]
struct ChannelsOut {
    default_size: String,
    max_size: String,
    allowed_roots: Vec<PathBuf>,
    lifetime: Lifetime,
    idle_limit: String,
    check_available_memory: bool,
}

impl From<&Config> for FileOut {
    fn from(config: &Config) -> FileOut {
        FileOut {
            channels: ChannelsOut {
                default_size: format_size(config.channels.default_size),
                max_size: match config.channels.max_size {
                    MaxSize::Bytes(bytes) => format_size(bytes),
                    percent => percent.to_string(),
                },
                allowed_roots: config.channels.allowed_roots.clone(),
                lifetime: config.channels.lifetime,
                idle_limit: format_duration(config.channels.idle_limit),
                check_available_memory: config.channels.check_available_memory,
            },
            tmpfs: config.tmpfs.clone(),
            owner: config.owner.clone(),
            hook: config.hook.clone(),
            node: config.node.clone(),
        }
    }
}

struct Location<'a> {
    origin: &'a Path,
    line: usize,
    key: String,
}

impl Location<'_> {
    fn error(&self, value: &str, reason: impl fmt::Display) -> Error {
        Error::config(format!(
            "{}:{}: {} {:?} {reason}",
            self.origin.display(),
            self.line,
            self.key,
            value
        ))
    }
}

/// `invalid size "x": reason` from the spec parser, as just the reason.
fn strip_invalid_prefix(err: &Error) -> String {
    err.reason()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A TOML or type error: toml says what and where; the key is read off the line it points at.
fn syntax_error(err: &toml::de::Error, text: &str, origin: &Path) -> Error {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else {
        return Error::config(format!("{}: {message}", origin.display()));
    };
    let line = line_of(text, span.start);
    let key = key_at(text, span.start);
    let key = match key {
        Some(key) => format!("{key}: "),
        None => String::new(),
    };
    Error::config(format!(
        "{}:{line}: {key}{message}; the keys are described in hostchan-config(8)",
        origin.display()
    ))
}

/// The dotted key on the line holding `offset` (`section.key`), if that line is `key = ...`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}
