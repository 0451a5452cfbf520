//! hostchan's unit names against systemd's own tool, `systemd-escape --path`, for every name
//! shorter than 256 characters (systemd-escape 252 does not hash longer names; the lifecycle
//! tests check those against systemd itself).

use std::path::Path;
use std::process::Command;

use hostchan::mount_unit_name;

fn systemd_escape(paths: &[String]) -> Vec<String> {
    let output = Command::new("systemd-escape")
        .args(["--path", "--suffix=mount", "--"])
        .args(paths)
        .output()
        .expect("systemd-escape is part of systemd: install it (apt-get install systemd)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Paths with every kind of byte systemd treats specially, plus pseudo-random ones.
fn paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        "/run/chan/c1",
        "/run/foo-bar",
        "/.hidden/x",
        "/a/.b/..c/d.",
        "/a b/ü",
        "/srv/ünïcödé/日本語/🦀",
        "/x\\y",
        "/weird/:_.@+=%,~!$&'()*;#[]{}<>|\"`^?",
        "/tab\there",
        "/-/--/-x-",
        "/ends/with.dot.",
        "/UPPER/lower/123",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    let alphabet: Vec<char> = "ab-._ :/\\é✓ Z9@+".chars().collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let mut path = String::from("/");
        let len = 1 + (seed % 60) as usize;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            path.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        // Keep to normalised paths, which is all hostchan ever names.
        let normalised = hostchan::normalize_absolute("host path", &path);
        if let Ok(p) = normalised {
            if p != Path::new("/") {
                paths.push(p.display().to_string());
            }
        }
    }
    // Right below the hashing threshold: 249 characters + ".mount" = 255.
    paths.push(format!("/{}", "a".repeat(249)));
    paths.push(format!("/{}/{}", "x".repeat(200), "y".repeat(48)));
    paths
}

#[test]
fn names_match_systemd_escape() {
    let paths = paths();
    let expected = systemd_escape(&paths);
    assert_eq!(expected.len(), paths.len());
    let mut checked = 0;
    for (path, expected) in paths.iter().zip(&expected) {
        let ours = mount_unit_name(Path::new(path));
        if expected.len() < 256 {
            assert_eq!(&ours, expected, "path {path:?}");
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} names compared");
}
