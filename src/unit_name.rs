//! systemd's unit names for paths (`systemd-escape --path`), including the hashing of long
//! names that systemd >= 251 applies (src/basic/unit-name.c).

use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use siphasher::sip::SipHasher24;

/// Names of this length or more are hashed (systemd's UNIT_NAME_MAX, which counts the NUL).
const UNIT_NAME_MAX: usize = 256;
const HASH_CHARS: usize = 16;
const LONG_NAME_HASH_KEY: [u8; 16] = [
    0xec, 0xf2, 0x37, 0xfb, 0x58, 0x32, 0x4a, 0x32, 0x84, 0x9f, 0x06, 0x9b, 0x0d, 0x21, 0xeb, 0x9a,
];

/// Escapes a normalised absolute path as systemd does for the name of a path-based unit.
pub fn escape_path(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let trimmed = trim_slashes(bytes);
    if trimmed.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(trimmed.len() * 2);
    for (i, &byte) in trimmed.iter().enumerate() {
        match byte {
            b'/' => out.push('-'),
            // A unit name must not start with a dot (think of /.snapshots).
            b'.' if i == 0 => push_escaped(&mut out, byte),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(byte as char),
            _ => push_escaped(&mut out, byte),
        }
    }
    out
}

fn trim_slashes(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b'/')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn push_escaped(out: &mut String, byte: u8) {
    out.push_str(&format!("\\x{byte:02x}"));
}

/// The name of the `.mount` unit for a normalised absolute path, as systemd itself computes it.
pub fn mount_unit_name(path: &Path) -> String {
    fit_unit_name(format!("{}.mount", escape_path(path)))
}

/// Whether systemd shortens the mount unit name of `path` with a hash: only then can another
/// path have the same unit name.
pub fn is_shortened(path: &Path) -> bool {
    escape_path(path).len() + ".mount".len() >= UNIT_NAME_MAX
}

/// Shortens a unit name that is too long the way systemd does: the first characters, `_`, and 16
/// hex digits of a SipHash-2-4 of the whole name (with its NUL), then the type suffix.
pub fn fit_unit_name(name: String) -> String {
    if name.len() < UNIT_NAME_MAX {
        return name;
    }
    let suffix_start = name.rfind('.').unwrap_or(name.len());
    let suffix = &name[suffix_start..];
    let mut hasher = SipHasher24::new_with_key(&LONG_NAME_HASH_KEY);
    hasher.write(name.as_bytes());
    hasher.write(&[0]);
    let hash: String = hasher
        .finish()
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // systemd keeps UNIT_NAME_MAX - 1 - strlen(type) - HASH_CHARS - 2 characters of the name.
    let keep = UNIT_NAME_MAX - 1 - (suffix.len() - 1) - HASH_CHARS - 2;
    let mut prefix_end = keep.min(suffix_start);
    while !name.is_char_boundary(prefix_end) {
        prefix_end -= 1;
    }
    format!("{}_{hash}{suffix}", &name[..prefix_end])
}

/// The unit that holds a container's `--lifetime delete` channels: started with the first of
/// them, stopped by `hostchan delete --container`, which takes them all down in one job. A
/// container id is letters, digits and `_.-:@+`; `-` `@` `+` are escaped as systemd escapes.
/// Never shortened by a hash, so that two ids never share a keeper: ids whose name would pass
/// 255 characters are refused ([`crate::spec::validate_container_id`]).
pub fn keeper_unit_name(container: &str) -> String {
    format!("hostchan-keep@{}.service", escape_container_id(container))
}

/// The unit that binds a container's channels (made by the NRI plugin before the container had
/// a unit) to the container's unit once it has one; named as the keeper is, and never shortened.
pub fn binder_unit_name(container: &str) -> String {
    format!("hostchan-bind@{}.service", escape_container_id(container))
}

fn escape_container_id(container: &str) -> String {
    let mut escaped = String::with_capacity(container.len());
    for &byte in container.as_bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => {
                escaped.push(byte as char)
            }
            _ => push_escaped(&mut escaped, byte),
        }
    }
    escaped
}

/// The unit that removes a channel's directory after it is unmounted.
pub fn cleanup_unit_name(mount_unit: &str) -> String {
    let stem = mount_unit.strip_suffix(".mount").unwrap_or(mount_unit);
    fit_unit_name(format!("hostchan-cleanup@{stem}.service"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeper_units() {
        assert_eq!(keeper_unit_name("4f2a"), "hostchan-keep@4f2a.service");
        assert_eq!(
            keeper_unit_name("web-1_a.b:c@d+e"),
            "hostchan-keep@web\\x2d1_a.b:c\\x40d\\x2be.service"
        );
    }

    /// A short path can escape to exactly the name systemd gives a long one: the unit name
    /// alone never tells two channels apart (the lifecycle checks the record's path).
    #[test]
    fn a_short_path_can_share_a_long_paths_unit_name() {
        let long = format!("/run/hostchan/a/{}/{}", "x".repeat(150), "y".repeat(130));
        let unit = mount_unit_name(Path::new(&long));
        assert_eq!(unit.len(), 255);
        let short = format!("/{}", unit.trim_end_matches(".mount").replace('-', "/"));
        assert!(short.len() < 256);
        assert_eq!(mount_unit_name(Path::new(&short)), unit);
        assert!(is_shortened(Path::new(&long)));
        assert!(!is_shortened(Path::new(&short)));
        assert!(!is_shortened(Path::new(&format!("/{}", "a".repeat(249)))));
        assert!(is_shortened(Path::new(&format!("/{}", "a".repeat(250)))));
    }

    #[test]
    fn escaping() {
        let cases: &[(&str, &str)] = &[
            ("/", "-"),
            ("/run/foo-bar", "run-foo\\x2dbar"),
            ("/.hidden/x", "\\x2ehidden-x"),
            ("/a/.b", "a-.b"),
            ("/a b/ü", "a\\x20b-\\xc3\\xbc"),
            ("/run/chan/c1", "run-chan-c1"),
            ("/x\\y:z_w.v", "x\\x5cy:z_w.v"),
            ("/a+b@c", "a\\x2bb\\x40c"),
        ];
        for (path, escaped) in cases {
            assert_eq!(escape_path(Path::new(path)), *escaped, "{path}");
        }
    }

    #[test]
    fn systemd_long_name_test_vector() {
        // From systemd's src/test/test-unit-name.c.
        let path = format!("/waldo{}", "a".repeat(246));
        let expected = format!("waldo{}_7736d9ed33c2ec55.mount", "a".repeat(227));
        assert_eq!(mount_unit_name(Path::new(&path)), expected);
        assert_eq!(expected.len(), 255);
    }

    #[test]
    fn names_below_the_limit_are_not_hashed() {
        let path = format!("/{}", "a".repeat(249)); // 249 + ".mount" = 255 characters
        assert_eq!(
            mount_unit_name(Path::new(&path)),
            format!("{}.mount", "a".repeat(249))
        );
        let path = format!("/{}", "a".repeat(250));
        let name = mount_unit_name(Path::new(&path));
        assert_eq!(name.len(), 255);
        assert!(name.starts_with(&"a".repeat(232)) && name.ends_with(".mount"));
    }

    #[test]
    fn cleanup_names_fit() {
        assert_eq!(
            cleanup_unit_name("run-chan-c1.mount"),
            "hostchan-cleanup@run-chan-c1.service"
        );
        let long = mount_unit_name(Path::new(&format!("/{}", "b".repeat(300))));
        let cleanup = cleanup_unit_name(&long);
        assert!(cleanup.len() < UNIT_NAME_MAX, "{cleanup}");
        assert!(cleanup.starts_with("hostchan-cleanup@b") && cleanup.ends_with(".service"));
        assert_ne!(
            cleanup,
            cleanup_unit_name(&mount_unit_name(Path::new("/c")))
        );
    }
}
