//! The host-channel spec `<host path>:<container path>[:<mode>[:<size>]]` and its rules.
//!
//! Pure: the bounds come in as [`Limits`], from the configuration; the disk is never looked at
//! here (that is [`crate::hostfs`]).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Size of a channel when the spec leaves it out (iSulad's default).
pub const DEFAULT_SIZE: u64 = 64 * MIB;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Longest path the kernel takes (PATH_MAX without its NUL) and longest file name.
const PATH_MAX: usize = 4095;
const NAME_MAX: usize = 255;

/// Trees a channel may never be created in, whatever the configuration says: the system's own
/// files, kernel interfaces, and the state of systemd and hostchan.
const PROTECTED_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/efi",
    "/etc",
    "/proc",
    "/run/dbus",
    "/run/systemd",
    "/run/udev",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/hostchan",
    "/var/lib/systemd",
    "/var/log/journal",
];

/// What the container may do with the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Rw,
    Ro,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Rw => "rw",
            Access::Ro => "ro",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated channel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSpec {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    #[serde(rename = "mode")]
    pub access: Access,
    /// tmpfs `size=` in bytes.
    pub size: u64,
}

/// The bounds a size must fall in, and the size used when none is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub min_size: u64,
    pub max_size: u64,
    /// Where `max_size` comes from, for the message that refuses a size above it.
    pub max_source: String,
    pub default_size: u64,
}

/// The longest text a spec can be: two paths, a mode and a size. Anything longer is refused
/// before it is looked at, so that a hostile value costs nothing to turn down.
pub const MAX_SPEC_LEN: usize = 2 * PATH_MAX + 3 + 2 + MAX_SIZE_LEN;
/// The longest size text: 30 fraction digits, 20 whole ones, the dot and a unit.
const MAX_SIZE_LEN: usize = 64;

/// Refuses a text longer than any spec can be.
pub fn check_spec_length(field: &'static str, text: &str) -> Result<()> {
    if text.len() > MAX_SPEC_LEN {
        return Err(Error::invalid(
            field,
            text,
            format!("is longer than any channel spec can be ({MAX_SPEC_LEN} bytes)"),
        ));
    }
    Ok(())
}

impl ChannelSpec {
    /// Parses and validates a spec; pure: the host path is not looked at on disk here.
    pub fn parse(spec: &str, limits: &Limits) -> Result<ChannelSpec> {
        check_spec_length("spec", spec)?;
        let fields: Vec<&str> = spec.split(':').collect();
        if fields.len() < 2 || fields.len() > 4 {
            return Err(Error::invalid(
                "spec",
                spec,
                format!(
                    "has {} field(s); expected <host path>:<container path>[:<rw|ro>[:<size>]]",
                    fields.len()
                ),
            ));
        }
        let host_path = parse_host_path(fields[0])?;
        let container_path = parse_container_path(fields[1])?;
        let access = parse_access(fields.get(2).copied().unwrap_or(""))?;
        let size = match fields.get(3).copied().unwrap_or("") {
            "" => limits.default_size,
            text => parse_size(text)?,
        };
        check_size(size, fields.get(3).copied().unwrap_or(""), limits)?;
        Ok(ChannelSpec {
            host_path,
            container_path,
            access,
            size,
        })
    }
}

fn parse_access(text: &str) -> Result<Access> {
    match text {
        "" | "rw" => Ok(Access::Rw),
        "ro" => Ok(Access::Ro),
        _ => Err(Error::invalid("mode", text, "must be rw or ro")),
    }
}

/// Parses a size such as `64M`, `1.5g`, `4096`, `10KiB` into bytes. Units are case-insensitive
/// powers of 1024; a fraction is allowed and the result is rounded down to whole bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |reason: &str| Error::invalid("size", text, reason.to_owned());
    if text.len() > MAX_SIZE_LEN {
        return Err(bad("is too long to be a size"));
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            return Err(bad(
                "expected a number with an optional unit b, k, m, g or t (e.g. 64M, 1.5g)",
            ))
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad(
            "expected a decimal number such as 64, 0.5 or 1.5 before the unit",
        ));
    }
    let too_large = || bad("is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let whole_bytes = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    let digits = fraction.trim_end_matches('0');
    if digits.len() > 30 {
        return Err(bad("has more than 30 fraction digits"));
    }
    let fraction_bytes = if digits.is_empty() {
        0
    } else {
        let numerator: u128 = digits.parse().map_err(|_| too_large())?;
        let denominator = 10u128.pow(digits.len() as u32);
        fraction_of(numerator, denominator, multiplier)
    };
    whole_bytes
        .checked_add(fraction_bytes)
        .and_then(|bytes| u64::try_from(bytes).ok())
        .ok_or_else(too_large)
}

/// `floor(numerator / denominator * multiplier)` for `numerator < denominator <= 10^30` and a
/// power-of-two `multiplier`, exactly: long division one bit at a time, so nothing overflows
/// (the remainder stays below 2^101).
fn fraction_of(numerator: u128, denominator: u128, multiplier: u64) -> u128 {
    let mut quotient = 0u128;
    let mut remainder = numerator;
    for _ in 0..multiplier.trailing_zeros() {
        remainder *= 2;
        quotient *= 2;
        if remainder >= denominator {
            remainder -= denominator;
            quotient += 1;
        }
    }
    quotient
}

fn check_size(size: u64, text: &str, limits: &Limits) -> Result<()> {
    let shown = if text.is_empty() {
        format!("{size} (the default)")
    } else {
        text.to_owned()
    };
    if size < limits.min_size {
        return Err(Error::invalid(
            "size",
            shown,
            format!(
                "is {size} bytes, below the minimum of one page ({} bytes)",
                limits.min_size
            ),
        ));
    }
    if size > limits.max_size {
        return Err(Error::invalid(
            "size",
            shown,
            format!(
                "is {size} bytes, above the maximum of {} ({} bytes)",
                limits.max_source, limits.max_size
            ),
        ));
    }
    Ok(())
}

/// The owner of a channel's root directory, `UID:GID`: numbers, since names mean different
/// users on the host and in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootOwner {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for RootOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

pub fn parse_root_owner(text: &str) -> Result<RootOwner> {
    let bad = || {
        Error::invalid(
            "root owner",
            text,
            "must be UID:GID in numbers, e.g. 100000:100000 for a container whose root is mapped there",
        )
    };
    if text.len() > 21 {
        return Err(bad());
    }
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    let number = |n: &str| -> Result<u32> {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        n.parse().map_err(|_| bad())
    };
    Ok(RootOwner {
        uid: number(uid)?,
        gid: number(gid)?,
    })
}

/// Makes an absolute path canonical without touching the disk: `//` and `.` collapse, a trailing
/// `/` goes; `..` is refused because its meaning depends on symlinks.
pub fn normalize_absolute(field: &'static str, text: &str) -> Result<PathBuf> {
    if text.is_empty() {
        return Err(Error::invalid(
            field,
            text,
            "is empty; give an absolute path",
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            text,
            format!("contains the control character {c:?}, which systemd cannot carry"),
        ));
    }
    if !text.starts_with('/') {
        return Err(Error::invalid(field, text, "must be an absolute path"));
    }
    let mut normalized = PathBuf::from("/");
    for component in Path::new(text).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                if name.len() > NAME_MAX {
                    return Err(Error::invalid(
                        field,
                        text,
                        format!("has a component longer than {NAME_MAX} bytes"),
                    ));
                }
                normalized.push(name);
            }
            Component::ParentDir => {
                return Err(Error::invalid(
                    field,
                    text,
                    "must not contain a '..' component",
                ))
            }
            Component::Prefix(_) => unreachable!("no path prefixes on Unix"),
        }
    }
    if normalized.as_os_str().len() > PATH_MAX {
        return Err(Error::invalid(
            field,
            text,
            format!("is longer than {PATH_MAX} bytes"),
        ));
    }
    Ok(normalized)
}

/// Characters systemd or mount(8) would not pass on literally: `$` is expanded in the argv of
/// the `/bin/mount` systemd runs for a mount unit (systemd 252), `%` is a unit-file specifier,
/// and `\`, `;`, `"` and `'` come back rewritten from the transient unit file after a
/// `daemon-reload`, so the cleanup would be told another path.
pub const REWRITTEN_CHARACTERS: &[char] = &['$', '%', '\\', ';', '"', '\''];

/// Refuses what would not reach systemd and the kernel exactly as written.
pub fn check_literal(field: &'static str, text: &str) -> Result<()> {
    if let Some(c) = text.chars().find(|c| REWRITTEN_CHARACTERS.contains(c)) {
        return Err(Error::invalid(
            field,
            text,
            format!("contains {c:?}, which systemd would not pass on literally; choose a path without $ % \\ ; \" '"),
        ));
    }
    // A unit file value loses its trailing whitespace when systemd reads it back.
    if text.ends_with(|c: char| c.is_whitespace()) {
        return Err(Error::invalid(
            field,
            text,
            "ends with whitespace, which systemd drops when it reads the unit back",
        ));
    }
    Ok(())
}

fn parse_host_path(text: &str) -> Result<PathBuf> {
    let path = normalize_absolute("host path", text)?;
    check_literal("host path", &path.to_string_lossy())?;
    if path == Path::new("/") {
        return Err(Error::invalid("host path", text, "must not be /"));
    }
    if let Some(tree) = protected_tree(&path) {
        return Err(Error::invalid(
            "host path",
            text,
            format!("is inside {tree}, which is protected; choose a path under /run or /srv"),
        ));
    }
    Ok(path)
}

/// The protected tree `path` lies in, if any (`/lib`, `/lib64`, `/libx32`, ... count as `/lib*`).
pub fn protected_tree(path: &Path) -> Option<String> {
    if let Some(Component::Normal(first)) = path.components().nth(1) {
        if first.to_string_lossy().starts_with("lib") {
            return Some(format!("/{}", first.to_string_lossy()));
        }
    }
    PROTECTED_TREES
        .iter()
        .find(|tree| path.starts_with(tree))
        .map(|tree| (*tree).to_owned())
}

fn parse_container_path(text: &str) -> Result<PathBuf> {
    let path = normalize_absolute("container path", text)?;
    check_literal("container path", &path.to_string_lossy())?;
    if path == Path::new("/") {
        return Err(Error::invalid(
            "container path",
            text,
            "must not be / (the container's root)",
        ));
    }
    if let Some(tree) = kernel_tree(&path) {
        return Err(Error::invalid(
            "container path",
            text,
            format!(
                "is in {tree}, which the kernel provides: a channel over it would let host users write what the container reads as {tree} (runc refuses such mounts too); choose another path{}",
                if tree == "/dev" { " (/dev/shm itself is allowed)" } else { "" }
            ),
        ));
    }
    Ok(path)
}

/// Container trees a channel may never be mounted in or over: the kernel's interfaces, which
/// the runtime mounts and labels for the container. `/dev/shm` itself is the exception: the
/// pod's shared memory is a tmpfs like a channel, and replacing it is a feature.
const KERNEL_TREES: &[&str] = &["/proc", "/sys", "/dev"];

/// The kernel tree a (normalized) container path is in, if any.
pub fn kernel_tree(path: &Path) -> Option<&'static str> {
    if path == Path::new("/dev/shm") {
        return None;
    }
    KERNEL_TREES
        .iter()
        .find(|tree| path.starts_with(tree))
        .copied()
}

/// A size as a person reads it: the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// Checks a container id: what engines use (hex ids, names of letters, digits, `_.-`), plus
/// `:@+`; 1 to 255 bytes, starting with a letter or digit. It goes into unit descriptions and
/// records, so nothing systemd could read as a specifier, escape or line break gets through.
pub fn validate_container_id(id: &str) -> Result<String> {
    let valid = id.len() <= 255
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:@+".contains(&b));
    if !valid {
        return Err(Error::invalid(
            "container id",
            id,
            "must be 1 to 255 letters, digits and _.-:@+, starting with a letter or digit",
        ));
    }
    // systemd would shorten a longer name with a hash, which two ids could share.
    if crate::unit_name::keeper_unit_name(id).len() > 255 {
        return Err(Error::invalid(
            "container id",
            id,
            "is too long: hostchan's unit for the container would pass systemd's 255 characters (each of -@+ counts 4)",
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_checks() {
        assert!(validate_container_id("4f2a-my_ctr.1").is_ok());
        assert!(validate_container_id("4f2a1b3c".repeat(8).as_str()).is_ok());
        for bad in [
            "",
            "a b",
            "a\nWants=x.service",
            "-x",
            ".x",
            "a%n",
            "a$b",
            "a\\x",
            "a/b",
            "ü",
        ] {
            let err = validate_container_id(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        assert!(validate_container_id(&"a".repeat(256)).is_err());
    }

    fn limits() -> Limits {
        Limits {
            min_size: 4096,
            max_size: 8 * GIB,
            max_source: "half the physical memory".into(),
            default_size: DEFAULT_SIZE,
        }
    }

    fn parse(text: &str) -> Result<ChannelSpec> {
        ChannelSpec::parse(text, &limits())
    }

    fn rejection(text: &str) -> String {
        match parse(text) {
            Ok(spec) => panic!("{text:?} was accepted as {spec:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{text:?}: {e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("4096b", 4096),
            ("4096B", 4096),
            ("1k", KIB),
            ("1K", KIB),
            ("1kb", KIB),
            ("1KiB", KIB),
            ("32M", 32 * MIB),
            ("32mb", 32 * MIB),
            ("32MIB", 32 * MIB),
            ("010m", 10 * MIB),
            ("1.5g", GIB + GIB / 2),
            ("1.50G", GIB + GIB / 2),
            ("0.5k", 512),
            ("1.0001k", 1024),
            ("2t", 2 * TIB),
            ("2TiB", 2 * TIB),
            ("0.999999999999999999999999999999t", TIB - 1),
            ("0.999999999999999999999999999999b", 0),
            ("1.999999999999999999999999999999k", 2047),
            ("0.5t", TIB / 2),
            ("16777215.999999999999999999999999999999t", u64::MAX),
            ("0.1k", 102),
            ("0.3m", 314_572),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text).ok(), Some(*bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1e6",
            "0x10",
            "1.",
            ".5",
            "1..5",
            "1.2.3",
            "m",
            "12q",
            "1mbb",
            "1ki",
            "18446744073709551616",
            "99999999999t",
            "16777216t",
            "1.0000000000000000000000000000001t",
            "1,5g",
            "１",
        ] {
            let err = parse_size(text).expect_err(text);
            assert!(err.to_string().starts_with("invalid size"), "{err}");
        }
    }

    #[test]
    fn full_spec_defaults() {
        let spec = parse("/run/chan/c1:/chan").unwrap();
        assert_eq!(spec.host_path, Path::new("/run/chan/c1"));
        assert_eq!(spec.container_path, Path::new("/chan"));
        assert_eq!(spec.access, Access::Rw);
        assert_eq!(spec.size, 67_108_864);
        assert_eq!(
            parse("/a:/b::").unwrap(),
            spec_of("/a", "/b", Access::Rw, DEFAULT_SIZE)
        );
        assert_eq!(parse("/a:/b:ro").unwrap().access, Access::Ro);
        assert_eq!(parse("/a:/b:ro:").unwrap().size, DEFAULT_SIZE);
        assert_eq!(parse("/a:/b::1M").unwrap().size, MIB);
        assert_eq!(
            parse("//run/./chan//c1/:/x/./y/:rw:32M").unwrap(),
            spec_of("/run/chan/c1", "/x/y", Access::Rw, 32 * MIB)
        );
    }

    fn spec_of(host: &str, container: &str, access: Access, size: u64) -> ChannelSpec {
        ChannelSpec {
            host_path: host.into(),
            container_path: container.into(),
            access,
            size,
        }
    }

    #[test]
    fn rejections_name_field_and_value() {
        let cases: &[(&str, &str)] = &[
            ("/a", "invalid spec \"/a\": has 1 field(s)"),
            ("/a:/b:rw:1M:x", "invalid spec \"/a:/b:rw:1M:x\": has 5 field(s)"),
            ("/a:/b:RW", "invalid mode \"RW\": must be rw or ro"),
            ("/a:/b:rx", "invalid mode \"rx\""),
            ("a:/b", "invalid host path \"a\": must be an absolute path"),
            (":/b", "invalid host path \"\": is empty"),
            ("/:/b", "invalid host path \"/\": must not be /"),
            ("//:/b", "invalid host path \"//\": must not be /"),
            ("/a/../b:/b", "invalid host path \"/a/../b\": must not contain a '..'"),
            ("/a\nb:/b", "invalid host path \"/a\\nb\": contains the control character"),
            ("/proc/x:/b", "invalid host path \"/proc/x\": is inside /proc"),
            ("/sys:/b", "invalid host path \"/sys\": is inside /sys"),
            ("/etc/x:/b", "is inside /etc"),
            ("/lib64/x:/b", "is inside /lib64"),
            ("/libx32/x:/b", "is inside /libx32"),
            ("/usr/local/x:/b", "is inside /usr"),
            ("/run/systemd/x:/b", "is inside /run/systemd"),
            ("/var/lib/hostchan/x:/b", "is inside /var/lib/hostchan"),
            ("/a:b", "invalid container path \"b\": must be an absolute path"),
            ("/a:/", "invalid container path \"/\": must not be /"),
            ("/a:/x/..", "invalid container path \"/x/..\": must not contain"),
            ("/a:/proc", "invalid container path \"/proc\": is in /proc, which the kernel provides"),
            ("/a:/proc/sys/kernel", "is in /proc, which the kernel provides"),
            ("/a://proc/./1/attr/", "invalid container path \"//proc/./1/attr/\": is in /proc"),
            ("/a:/sys", "is in /sys"),
            ("/a:/sys/fs/cgroup", "is in /sys"),
            ("/a:/dev", "is in /dev, which the kernel provides"),
            ("/a:/dev/shm/x", "(/dev/shm itself is allowed)"),
            ("/a:/dev/mqueue", "is in /dev"),
            ("/a:", "invalid container path \"\": is empty"),
            ("/a:/b:rw:0", "invalid size \"0\": is 0 bytes, below the minimum of one page (4096 bytes)"),
            ("/a:/b:rw:4095", "below the minimum of one page (4096 bytes)"),
            ("/a:/b:rw:9g", "invalid size \"9g\": is 9663676416 bytes, above the maximum of half the physical memory (8589934592 bytes)"),
            ("/a:/b:rw:lots", "invalid size \"lots\""),
            ("/run/sys${X}temd:/b", "contains '$', which systemd would not pass on literally"),
            ("/run/a$$b:/b", "contains '$'"),
            ("/run/a%n:/b", "contains '%'"),
            ("/run/a\\x2d:/b", "contains '\\\\'"),
            ("/run/a;b:/b", "contains ';'"),
            ("/run/a\"b:/b", "contains '\"'"),
            ("/run/a'b:/b", "contains '\\''"),
            ("/run/a :/b", "ends with whitespace"),
            ("/run/a /:/b", "invalid host path \"/run/a \": ends with whitespace"),
            ("/run/a\t:/b", "control character"),
            ("/run/a:/b$c", "invalid container path \"/b$c\": contains '$'"),
            ("/run/a:/b%i", "invalid container path \"/b%i\": contains '%'"),
        ];
        for (text, expected) in cases {
            let message = rejection(text);
            assert!(message.contains(expected), "{text:?}: got {message:?}");
            assert!(
                !message.contains('\n'),
                "{text:?}: not one line: {message:?}"
            );
        }
    }

    #[test]
    fn kernel_trees_only_by_whole_components() {
        for allowed in [
            "/dev/shm",
            "/procs",
            "/system",
            "/devices",
            "/data/proc",
            "/run/sys",
        ] {
            assert!(parse(&format!("/a:{allowed}")).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn root_owners() {
        assert_eq!(
            parse_root_owner("100000:100001").unwrap(),
            RootOwner {
                uid: 100000,
                gid: 100001
            }
        );
        assert_eq!(parse_root_owner("0:0").unwrap().to_string(), "0:0");
        for bad in [
            "",
            "1",
            "1:",
            ":1",
            "a:b",
            "-1:0",
            "1:2:3",
            "4294967296:0",
            " 1:1",
        ] {
            let err = parse_root_owner(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        assert_eq!(parse("/a:/b:rw:4096").unwrap().size, 4096);
        assert_eq!(parse("/a:/b:rw:8g").unwrap().size, 8 * GIB);
    }

    #[test]
    fn default_size_above_maximum_is_reported_as_default() {
        let small = Limits {
            max_size: MIB,
            max_source: "channels.max_size in /etc/hostchan/config.toml".into(),
            ..limits()
        };
        let err = ChannelSpec::parse("/a:/b", &small).unwrap_err().to_string();
        assert!(err.contains("(the default)"), "{err}");
        let err = ChannelSpec::parse("/a:/b:rw:2m", &small)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("is 2097152 bytes, above the maximum of channels.max_size in /etc/hostchan/config.toml (1048576 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn long_components_are_refused() {
        let long = format!("/run/{}:/b", "a".repeat(256));
        assert!(rejection(&long).contains("longer than 255 bytes"));
        let ok = format!("/run/{}:/b", "a".repeat(255));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(format_size(64 * MIB), "64M");
        assert_eq!(format_size(GIB + GIB / 2), "1536M");
        assert_eq!(format_size(4096), "4K");
        assert_eq!(format_size(1000), "1000B");
    }
}
