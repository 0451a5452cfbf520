//! The packages a distribution would ship, as `packaging/build` makes them: their file lists,
//! maintainer scripts and scriptlets, lintian, an install into a scratch root, and the man pages.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::TempDir;

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

/// Runs packaging/build once for all the tests in this file.
fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        let repo = common::repo();
        let out = run(Command::new(repo.join("packaging/build")).current_dir(repo));
        let find = |suffix: &str| {
            out.lines()
                .map(|line| repo.join(line.trim()))
                .find(|path| path.to_string_lossy().ends_with(suffix))
                .unwrap_or_else(|| panic!("packaging/build made no *{suffix}:\n{out}"))
        };
        Packages {
            deb: find("_amd64.deb"),
            rpm: find(".x86_64.rpm"),
        }
    })
}

#[track_caller]
fn run(command: &mut Command) -> String {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const MAN_PAGES: &[&str] = &[
    "hostchan",
    "hostchan-cdi-spec",
    "hostchan-config",
    "hostchan-config-check",
    "hostchan-config-show",
    "hostchan-create",
    "hostchan-delete",
    "hostchan-gc",
    "hostchan-list",
    "hostchan-metrics",
    "hostchan-nri",
    "hostchan-oci-hook",
    "hostchan-status",
];

fn set(items: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    items.into_iter().collect()
}

#[test]
fn deb_has_exactly_the_expected_files() {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&packages().deb));
    let files = set(listing
        .lines()
        .filter(|line| !line.starts_with('d'))
        .filter_map(|line| line.split_whitespace().last())
        .map(|path| path.trim_start_matches('.').to_owned()));
    let mut expected = set([
        "/usr/bin/hostchan",
        "/etc/hostchan/config.toml",
        "/usr/lib/systemd/system/hostchan-gc.service",
        "/usr/lib/systemd/system/hostchan-nri.service",
        "/usr/lib/systemd/system/hostchan-prune.service",
        "/usr/share/containers/oci/hooks.d/hostchan.json",
        "/etc/cdi/hostchan.json",
        "/usr/share/hostchan/isulad-hooks.json",
        "/usr/share/hostchan/containerd-nri.toml",
        "/usr/share/bash-completion/completions/hostchan",
        "/usr/share/zsh/vendor-completions/_hostchan",
        "/usr/share/fish/vendor_completions.d/hostchan.fish",
        "/usr/share/doc/hostchan/README.md",
        "/usr/share/doc/hostchan/copyright",
        "/usr/share/doc/hostchan/changelog.Debian.gz",
    ]
    .map(str::to_owned));
    expected.extend(
        MAN_PAGES
            .iter()
            .map(|page| format!("/usr/share/man/man8/{page}.8.gz")),
    );
    assert_eq!(files, expected);

    let control = TempDir::new("deb-control");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&packages().deb)
        .arg(control.path("DEBIAN")));
    let read = |name: &str| std::fs::read_to_string(control.path("DEBIAN").join(name)).unwrap();
    assert_eq!(
        read("conffiles"),
        "/etc/hostchan/config.toml\n/etc/cdi/hostchan.json\n"
    );
    let postinst = read("postinst");
    assert!(
        postinst.contains("deb-systemd-helper enable hostchan-gc.service"),
        "{postinst}"
    );
    // The NRI plugin is installed but left for the operator to enable: its postinst enables
    // it again only where it was installed before (an upgrade keeps the operator's choice).
    let nri = postinst
        .split("# End automatically added section")
        .find(|block| block.contains("enable hostchan-nri.service"))
        .unwrap_or_else(|| panic!("no block for hostchan-nri.service:\n{postinst}"));
    assert!(
        nri.contains("if deb-systemd-helper debian-installed hostchan-nri.service"),
        "{nri}"
    );
    assert!(read("postrm").contains("hostchan-gc.service"));
    let fields = read("control");
    assert!(fields.contains("Depends: libc6"), "{fields}");
    assert!(fields.contains(", systemd\n"), "{fields}");
}

#[test]
fn deb_passes_lintian_without_errors() {
    let output = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&packages().deb)
        .output()
        .expect("run lintian");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && !report.lines().any(|l| l.starts_with("E: ")),
        "lintian: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn deb_installs_into_a_scratch_root_and_runs() {
    let root = TempDir::new("deb-root");
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&packages().deb)
        .arg(&root.0));
    let hostchan = root.path("usr/bin/hostchan");
    let version = run(Command::new(&hostchan).arg("--version"));
    assert_eq!(version, format!("hostchan {}\n", env!("CARGO_PKG_VERSION")));
    // The shipped configuration is valid and is the built-in one.
    let config = root.path("etc/hostchan/config.toml");
    let checked = run(Command::new(&hostchan)
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]));
    assert!(checked.ends_with(": valid\n"), "{checked}");
    let shown = run(Command::new(&hostchan)
        .arg("--config")
        .arg(&config)
        .args(["config", "show"]));
    assert!(shown.contains("max_size = \"50%\""), "{shown}");
    // The hook file points at the installed binary.
    let hook: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.path("usr/share/containers/oci/hooks.d/hostchan.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hook["hook"]["path"], "/usr/bin/hostchan");
    let unit =
        std::fs::read_to_string(root.path("usr/lib/systemd/system/hostchan-gc.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/hostchan gc --offline\n"),
        "{unit}"
    );
    // bash completes the subcommands from the installed file.
    let script = format!(
        "source {}; COMP_WORDS=(hostchan c); COMP_CWORD=1; COMP_LINE='hostchan c'; COMP_POINT=10; \
         _hostchan hostchan c hostchan; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        root.path("usr/share/bash-completion/completions/hostchan")
            .display()
    );
    let words = run(Command::new("bash").arg("-c").arg(&script));
    assert_eq!(words, "create\ncdi-spec\nconfig\n", "{words}");
}

#[test]
fn every_man_page_renders() {
    let root = TempDir::new("man-root");
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&packages().deb)
        .arg(&root.0));
    for page in MAN_PAGES {
        let path = root.path(&format!("usr/share/man/man8/{page}.8.gz"));
        let output = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run man");
        // man justifies lines; compare with single spaces.
        let text = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{page}: {warnings}");
        assert!(warnings.is_empty(), "{page}: {warnings}");
        assert!(text.contains("NAME"), "{page}: {text}");
        assert!(text.contains(&format!("{page} - ")), "{page}: {text}");
        assert!(text.contains("EXIT STATUS"), "{page}: {text}");
        assert!(
            !text.contains("SUBCOMMANDS EXIT STATUS"),
            "{page}: empty section"
        );
        let synopsis = match *page {
            "hostchan-oci-hook" => "hostchan oci-hook [".to_owned(),
            "hostchan-cdi-spec" => "hostchan cdi-spec [".to_owned(),
            page => format!("{} [", page.replace('-', " ")),
        };
        assert!(
            text.contains(&synopsis),
            "{page}: no synopsis {synopsis:?}:\n{text}"
        );
    }
}

#[test]
fn rpm_has_the_expected_files_and_scriptlets() {
    let rpm = &packages().rpm;
    let files = set(run(Command::new("rpm").arg("-qlp").arg(rpm))
        .lines()
        .filter(|path| !path.starts_with("/usr/lib/.build-id"))
        .map(str::to_owned));
    let mut expected = set([
        "/usr/bin/hostchan",
        "/etc/hostchan",
        "/etc/hostchan/config.toml",
        "/usr/lib/systemd/system/hostchan-gc.service",
        "/usr/lib/systemd/system/hostchan-nri.service",
        "/usr/lib/systemd/system/hostchan-prune.service",
        "/usr/lib/systemd/system-preset/80-hostchan.preset",
        "/usr/share/containers",
        "/usr/share/containers/oci",
        "/usr/share/containers/oci/hooks.d",
        "/usr/share/containers/oci/hooks.d/hostchan.json",
        "/etc/cdi",
        "/etc/cdi/hostchan.json",
        "/usr/share/hostchan",
        "/usr/share/hostchan/isulad-hooks.json",
        "/usr/share/hostchan/containerd-nri.toml",
        "/usr/share/bash-completion/completions/hostchan",
        "/usr/share/zsh/site-functions/_hostchan",
        "/usr/share/fish/vendor_completions.d/hostchan.fish",
        "/usr/share/doc/hostchan-0.1.0",
        "/usr/share/doc/hostchan-0.1.0/README.md",
        "/usr/share/licenses/hostchan-0.1.0",
        "/usr/share/licenses/hostchan-0.1.0/LICENSE",
        "/var/lib/hostchan",
    ]
    .map(str::to_owned));
    // rpmbuild compresses man pages where its brp-compress works (Fedora), not on Debian.
    let man: BTreeSet<String> = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/man/"))
        .cloned()
        .collect();
    let expected_man = |suffix: &str| {
        set(MAN_PAGES
            .iter()
            .map(|page| format!("/usr/share/man/man8/{page}.8{suffix}")))
    };
    assert!(
        man == expected_man("") || man == expected_man(".gz"),
        "{man:#?}"
    );
    expected.extend(man);
    assert_eq!(files, expected);

    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm));
    for scriptlet in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
    ] {
        let body = scripts
            .split_once(scriptlet)
            .map(|(_, rest)| rest.split("scriptlet").next().unwrap_or(""))
            .unwrap_or_else(|| panic!("no {scriptlet}:\n{scripts}"));
        if scriptlet != "postuninstall scriptlet" {
            assert!(body.contains("hostchan-gc.service"), "{scriptlet}: {body}");
            assert!(body.contains("hostchan-nri.service"), "{scriptlet}: {body}");
        }
    }
    let config = run(Command::new("rpm").args(["-qp", "--configfiles"]).arg(rpm));
    assert_eq!(
        config,
        "/etc/cdi/hostchan.json\n/etc/hostchan/config.toml\n"
    );
    // %config(noreplace): rpm's file flags c (config) and n (noreplace).
    let flags = run(Command::new("rpm")
        .args(["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\\n]"])
        .arg(rpm));
    assert!(
        flags.lines().any(|l| l == "cn /etc/hostchan/config.toml"),
        "{flags}"
    );
    let preset =
        std::fs::read_to_string(Path::new(common::repo()).join("packaging/rpm/80-hostchan.preset"))
            .unwrap();
    assert!(preset.contains("enable hostchan-gc.service"));
    assert!(preset.contains("disable hostchan-nri.service"));
    let requires = run(Command::new("rpm").args(["-qpR"]).arg(rpm));
    assert!(requires.lines().any(|l| l == "systemd"), "{requires}");
}

#[test]
fn rpm_payload_unpacks_and_runs() {
    let root = TempDir::new("rpm-root");
    let archive = root.path("payload.tar.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("rpm2archive - < \"$1\" > \"$2\"")
        .arg("sh")
        .arg(&packages().rpm)
        .arg(&archive));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&root.0));
    let hostchan = root.path("usr/bin/hostchan");
    let version = run(Command::new(&hostchan).arg("--version"));
    assert_eq!(version, format!("hostchan {}\n", env!("CARGO_PKG_VERSION")));
    let checked = run(Command::new(&hostchan)
        .arg("--config")
        .arg(root.path("etc/hostchan/config.toml"))
        .args(["config", "check"]));
    assert!(checked.ends_with(": valid\n"), "{checked}");
    let unit =
        std::fs::read_to_string(root.path("usr/lib/systemd/system/hostchan-gc.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/hostchan gc --offline\n"),
        "{unit}"
    );
}
