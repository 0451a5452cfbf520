//! What an operator relies on: the configuration file, `gc` and the shipped
//! hostchan-gc.service after a crash, and how channels look in systemctl and the journal.

mod common;

use std::fs;
use std::path::Path;

use common::{Boot, Sandbox, TempDir, HOSTCHAN};

fn records_in(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(state.join("channels"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A unit directory holding the shipped hostchan-gc.service (running this build's binary),
/// wanted by the sandbox's default target as `systemctl enable` would make sysinit.target want it.
fn gc_service_units(dir: &Path) {
    let shipped = fs::read_to_string(common::repo().join("systemd/hostchan-gc.service")).unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/hostchan gc --offline\n"));
    let unit = shipped.replace("/usr/bin/hostchan", HOSTCHAN);
    fs::write(dir.join("hostchan-gc.service"), unit).unwrap();
    let wants = dir.join("hostchan-sandbox.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        dir.join("hostchan-gc.service"),
        wants.join("hostchan-gc.service"),
    )
    .unwrap();
}

#[test]
fn gc_at_boot_removes_leftovers_of_a_crash_and_nothing_else() {
    let state = TempDir::new("gc-state");
    let disk = TempDir::new("gc-disk");
    let units = TempDir::new("gc-units");
    gc_service_units(&units.0);
    let disk_path = |relative: &str| disk.path(relative).display().to_string();
    fs::create_dir(disk.path("existing")).unwrap();
    fs::create_dir(disk.path("not-a-channel")).unwrap();
    let a = disk_path("existing/new/a");
    let b = disk_path("b");
    let c = disk_path("c");

    // Before the crash: three channels on persistent disk.
    {
        let sb = Sandbox::boot_with(&Boot {
            state_dir: Some(state.0.clone()),
            ..Boot::default()
        });
        for path in [&a, &b, &c] {
            sb.hostchan(&["create", "--unbound", &format!("{path}:/x:rw:1M")])
                .ok();
            assert!(sb.mount_options(path).is_some(), "{path} not mounted");
        }
        // The sandbox is killed: its mounts and units vanish, as in a host crash.
    }
    assert_eq!(records_in(&state.0).len(), 3);
    for path in [&a, &b, &c] {
        assert!(Path::new(path).is_dir(), "{path} should be left over");
    }
    // Something written into the directory after the crash is not hostchan's to remove.
    fs::write(disk.path("c/keep"), "data").unwrap();

    // --dry-run reports, and removes nothing.
    {
        let sb = Sandbox::boot_with(&Boot {
            state_dir: Some(state.0.clone()),
            ..Boot::default()
        });
        let out = sb.hostchan(&["gc", "--dry-run", "--output", "json"]).ok();
        let json = out.json();
        let leftovers = json["leftovers"].as_array().unwrap();
        assert_eq!(leftovers.len(), 3, "{out:#?}");
        assert!(leftovers.iter().all(|l| l["outcome"] == "would-remove"));
        let text = sb.hostchan(&["gc", "--dry-run"]).ok().stdout;
        assert!(
            text.contains(&format!("Would remove leftover channel {b}")),
            "{text}"
        );
        assert!(
            text.ends_with("Nothing was removed (--dry-run).\n"),
            "{text}"
        );
        assert_eq!(records_in(&state.0).len(), 3);
        assert!(Path::new(&a).is_dir() && Path::new(&b).is_dir());

        // A create in progress holds the record lock shared; gc waits for it rather than
        // taking the half-made channel for a leftover.
        sb.sh("flock -s /var/lib/hostchan/channels/.lock sleep 2 </dev/null >/dev/null 2>&1 &")
            .ok();
        sb.wait_for(
            || {
                sb.sh("flock -n -x /var/lib/hostchan/channels/.lock true")
                    .code
                    != 0
            },
            "the shared lock to be taken",
        );
        let out = sb.run(&["timeout", "1", HOSTCHAN, "gc"]);
        assert_eq!(out.code, 124, "gc did not wait for the lock: {out:#?}");
        assert_eq!(records_in(&state.0).len(), 3);
        assert!(Path::new(&b).is_dir());
    }

    // The next boot runs the shipped hostchan-gc.service.
    let sb = Sandbox::boot_with(&Boot {
        state_dir: Some(state.0.clone()),
        extra_units: Some(units.0.clone()),
    });
    sb.wait_for(
        || sb.property("hostchan-gc.service", "ExecMainExitTimestampMonotonic") != "0",
        "hostchan-gc.service to run",
    );
    assert_eq!(sb.property("hostchan-gc.service", "Result"), "success");
    assert_eq!(sb.property("hostchan-gc.service", "ExecMainStatus"), "0");

    assert!(!Path::new(&a).exists(), "{a} was not removed");
    assert!(
        !disk.path("existing/new").exists(),
        "the parent hostchan's mount created was not removed"
    );
    assert!(
        disk.path("existing").is_dir(),
        "a parent that existed before was removed"
    );
    assert!(!Path::new(&b).exists(), "{b} was not removed");
    assert_eq!(fs::read_to_string(disk.path("c/keep")).unwrap(), "data");
    assert!(disk.path("not-a-channel").is_dir());
    let kept = records_in(&state.0);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let record = fs::read_to_string(state.path("channels").join(&kept[0])).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["host_path"], c.as_str(), "{record}");
    // By the unit's syslog identifier, which PID 1 gives the journal with the output stream:
    // `-u` needs journald to read the process's cgroup, and gc may be gone by then (on this
    // sandbox's cgroup v1, where a dead process is no longer in the unit's cgroup, its lines
    // were stored without _SYSTEMD_UNIT in 1 of 2 runs).
    sb.journal_matching(
        &["-t", "hostchan-gc"],
        &[
            &format!("Removed leftover channel {b}: directory and record"),
            &format!("Kept {c}: cannot remove channel directory"),
        ],
    );

    // A live channel is never a leftover; the kept one goes once it is empty.
    let d = disk_path("d");
    sb.hostchan(&["create", "--unbound", &format!("{d}:/x:rw:1M")])
        .ok();
    fs::write(sb.path(&d).join("live"), "x").unwrap();
    let out = sb.hostchan(&["gc"]).ok();
    assert!(out.stdout.contains(&format!("Kept {c}")), "{out:#?}");
    assert!(!out.stdout.contains(&d), "{out:#?}");
    assert!(sb.mount_options(&d).is_some());
    assert_eq!(fs::read_to_string(sb.path(&d).join("live")).unwrap(), "x");
    fs::remove_file(disk.path("c/keep")).unwrap();
    let out = sb.hostchan(&["gc", "--output", "json"]).ok().json();
    assert_eq!(out["leftovers"][0]["outcome"], "removed", "{out}");
    assert_eq!(out["leftovers"][0]["directory"], true, "{out}");
    assert!(!Path::new(&c).exists());
    sb.hostchan(&["delete", &d]).ok();
    assert!(!Path::new(&d).exists());
    assert!(records_in(&state.0).is_empty());
    assert_eq!(
        sb.hostchan(&["gc"]).ok().stdout,
        "No leftovers: every channel hostchan has a record of is mounted.\n"
    );
}

/// `gc --dry-run` writes nothing: not the records directory where none is, not the lock where
/// no create made it, and it reports the same as before.
#[test]
fn gc_dry_run_writes_nothing() {
    let sb = Sandbox::boot();
    let records = sb.path("/var/lib/hostchan/channels");
    assert!(!records.exists());
    let out = sb.hostchan(&["gc", "--dry-run"]).ok();
    assert_eq!(
        out.stdout,
        "No leftovers: every channel hostchan has a record of is mounted.\n"
    );
    assert!(!records.exists(), "gc --dry-run made {}", records.display());
    fs::create_dir(&records).unwrap();
    sb.hostchan(&["gc", "--dry-run", "--output", "json"]).ok();
    assert_eq!(
        fs::read_dir(&records).unwrap().count(),
        0,
        "gc --dry-run wrote into the records directory"
    );
    // Once a create has made the lock, a dry run takes it as before (and writes nothing).
    fs::remove_dir(&records).unwrap();
    sb.hostchan(&["create", "--unbound", "/run/hostchan/dry:/x:rw:1M"])
        .ok();
    let before: Vec<_> = fs::read_dir(&records)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    sb.hostchan(&["gc", "--dry-run"]).ok();
    let after: Vec<_> = fs::read_dir(&records)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after);
    sb.hostchan(&["delete", "/run/hostchan/dry"]).ok();
}

#[test]
fn configuration_shapes_channels_and_a_broken_file_stops_create_only() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("config");
    let config = dir.path("config.toml");
    let config = config.to_str().unwrap();
    fs::write(
        config,
        r#"
[channels]
default_size = "1M"
allowed_roots = ["/run/allowed"]

[tmpfs]
noexec = false
nr_inodes = 64

[owner]
default = "unbound"
"#,
    )
    .unwrap();

    let out = sb.hostchan(&["--config", config, "create", "/run/other/x:/x"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr
            .contains("is outside the allowed roots (/run/allowed) of channels.allowed_roots in"),
        "{out:#?}"
    );
    sb.assert_no_trace("/run/other/x");
    assert!(!sb.path("/run/other").exists());

    // No owner given: owner.default makes it unbound. No size given: default_size.
    let out = sb
        .hostchan(&[
            "--config",
            config,
            "create",
            "/run/allowed/x:/x",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(out["owner"], serde_json::Value::Null, "{out}");
    let options = sb.mount_options("/run/allowed/x").expect("mounted");
    assert!(options.contains("nr_inodes=64"), "{options}");
    assert!(!options.contains("noexec"), "{options}");
    let stat = nix::sys::statvfs::statvfs(&sb.path("/run/allowed/x")).unwrap();
    assert_eq!(stat.blocks() * stat.fragment_size(), 1 << 20);
    assert_eq!(stat.files(), 64);
    // The inode cap holds: empty files run out long before the bytes do.
    let mut made = 0;
    for i in 0..100 {
        if fs::File::create(sb.path(&format!("/run/allowed/x/f{i}"))).is_err() {
            break;
        }
        made += 1;
    }
    assert!(made < 64, "made {made} files with nr_inodes=64");

    let shown = sb
        .hostchan(&["--config", config, "config", "show"])
        .ok()
        .stdout;
    assert!(shown.contains("nr_inodes = 64"), "{shown}");
    assert!(shown.contains("default = \"unbound\""), "{shown}");

    // A broken file: create refuses naming file, line and key, and leaves nothing ...
    fs::write(config, "[channels]\nmax_size = \"75%\"\n").unwrap();
    for args in [
        vec!["--config", config, "config", "check"],
        vec![
            "--config",
            config,
            "create",
            "--unbound",
            "/run/allowed/y:/y",
        ],
    ] {
        let out = sb.hostchan(&args);
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(
            out.stderr.contains(&format!(
                "{config}:2: channels.max_size \"75%\" must be between 1% and 50%"
            )),
            "{out:#?}"
        );
    }
    assert!(!sb.path("/run/allowed/y").exists());
    assert!(sb.units_matching("*allowed-y*").is_empty());
    assert_eq!(
        sb.record_files().len(),
        1,
        "only /run/allowed/x has a record"
    );
    // ... but list, delete and the cleanup never read it.
    sb.hostchan(&["--config", config, "list"]).ok();
    sb.hostchan(&["--config", config, "delete", "/run/allowed/x"])
        .ok();
    sb.assert_no_trace("/run/allowed/x");

    fs::write(config, "[owner]\nallow_unbound = false\n").unwrap();
    let out = sb.hostchan(&["--config", config, "create", "--unbound", "/run/u:/u"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("unbound channels are turned off"),
        "{out:#?}"
    );
    sb.assert_no_trace("/run/u");

    let out = sb.hostchan(&["--config", "/nonexistent.toml", "config", "check"]);
    assert_eq!(out.code, 2, "{out:#?}");
    // Without --config and without /etc/hostchan/config.toml, the built-in rules apply.
    let out = sb
        .run(&["env", "-u", "HOSTCHAN_CONFIG", HOSTCHAN, "config", "check"])
        .ok();
    if !Path::new(hostchan::DEFAULT_CONFIG_PATH).exists() {
        assert!(
            out.stdout.contains("the built-in defaults apply"),
            "{out:#?}"
        );
    }
}

#[test]
fn systemctl_and_the_journal_show_a_channel_a_person_understands() {
    let sb = Sandbox::boot();
    sb.start_scope("web.scope");
    sb.hostchan(&[
        "create",
        "--scope",
        "web.scope",
        "--container",
        "web1",
        "/run/chan/web:/data:ro:8M",
    ])
    .ok();
    let unit = "run-chan-web.mount";
    for name in ["/run/chan/web", unit] {
        let status = sb.run(&["systemctl", "status", "--no-pager", "--lines=20", name]);
        // 0: active.
        assert_eq!(status.code, 0, "{status:#?}");
        let text = status.stdout;
        for expected in [
            "run-chan-web.mount - Host channel /run/chan/web -> /data (ro, 8M) of container web1, bound to web.scope",
            "Active: active (mounted)",
            "Where: /run/chan/web",
            "What: tmpfs",
            "Docs: man:hostchan(8)",
        ] {
            assert!(text.contains(expected), "{name}: {expected:?} missing from:\n{text}");
        }
    }
    let journal = |unit: &str| {
        sb.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
            .stdout
    };
    sb.wait_for(
        || {
            journal(unit).contains(
                "created channel /run/chan/web -> /data (ro, 8388608 bytes), owner web.scope",
            )
        },
        "hostchan's create line in journalctl -u run-chan-web.mount",
    );
    // The lines are hostchan's own, not systemd's.
    let fields = sb
        .run(&[
            "journalctl",
            "--no-pager",
            "-o",
            "verbose",
            "-u",
            unit,
            "SYSLOG_IDENTIFIER=hostchan",
        ])
        .stdout;
    assert!(
        fields.contains("OBJECT_SYSTEMD_UNIT=run-chan-web.mount"),
        "{fields}"
    );

    sb.run(&["systemctl", "stop", "web.scope"]).ok();
    sb.wait_for(
        || !sb.path("/run/chan/web").exists(),
        "the channel to go with its scope",
    );
    sb.wait_for(
        || journal(unit).contains("removed channel directory /run/chan/web and its record"),
        "the cleanup's line in journalctl -u run-chan-web.mount",
    );
    let status = sb.run(&["systemctl", "status", "--no-pager", unit]);
    assert_ne!(status.code, 0, "{status:#?}");
}

#[test]
fn callers_without_root_are_told_so_and_change_nothing() {
    let sb = Sandbox::boot();
    sb.start_scope("app.scope");
    sb.hostchan(&["create", "--unbound", "/run/chan/mine:/x"])
        .ok();
    let as_nobody = |args: &[&str]| {
        let mut argv = vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            HOSTCHAN,
        ];
        argv.extend_from_slice(args);
        sb.run(&argv)
    };
    for args in [
        &["create", "--scope", "app.scope", "/run/chan/theirs:/x"][..],
        &["create", "--unbound", "/run/chan/theirs:/x"],
        &["delete", "/run/chan/mine"],
        &["gc"],
        // The records are root's alone (0700), so even looking needs root.
        &["list"],
    ] {
        let out = as_nobody(args);
        assert_eq!(out.code, 1, "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains("run hostchan as root"),
            "{args:?}: {out:#?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:#?}");
    }
    assert!(!sb.path("/run/chan/theirs").exists());
    assert!(sb.mount_options("/run/chan/mine").is_some());
    assert_eq!(sb.record_files().len(), 1);
    sb.hostchan(&["delete", "/run/chan/mine"]).ok();
}

/// `node.max_total_size` caps all channels on the node together, whoever asks: a create past it
/// is refused with one line naming the budget, what uses it and what is left, and leaves
/// nothing; `list` shows the total against the budget; a channel gone makes room again.
#[test]
fn the_node_budget_caps_all_channels_together() {
    let sb = Sandbox::boot();
    sb.start_scope("b.scope");
    let dir = TempDir::new("budget");
    let config = dir.path("config.toml");
    let config = config.to_str().unwrap();
    fs::write(config, "[node]\nmax_total_size = \"3M\"\n").unwrap();
    let create =
        |spec: &str| sb.hostchan(&["--config", config, "create", "--scope", "b.scope", spec]);
    create("/run/budget/a:/a:rw:1M").ok();
    create("/run/budget/b:/b:rw:1M").ok();
    let refused = create("/run/budget/c:/c:rw:2M");
    assert_eq!(refused.code, 1, "{refused:#?}");
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{refused:#?}");
    for said in [
        "cannot create channel /run/budget/c (2M)",
        "would come to 4M, over node.max_total_size = 3M in ",
        "2 channels use 2M, 1M is left",
        "raise node.max_total_size",
    ] {
        assert!(line.contains(said), "{said:?} not in {line}");
    }
    assert!(!sb.path("/run/budget/c").exists());
    assert_eq!(sb.channel_units().len(), 2, "{:?}", sb.channel_units());
    assert_eq!(sb.record_files().len(), 2);

    let list = sb.hostchan(&["--config", config, "list"]).ok();
    assert!(
        list.stdout.contains(
            "2 channels, 2M in all, 0B used; the node's budget (node.max_total_size) 3M, 1M left"
        ),
        "{}",
        list.stdout
    );
    // What fits in what is left is made; a channel gone makes room.
    create("/run/budget/c:/c:rw:1M").ok();
    sb.hostchan(&["delete", "/run/budget/a"]).ok();
    create("/run/budget/d:/d:rw:1M").ok();
    for path in ["/run/budget/b", "/run/budget/c", "/run/budget/d"] {
        sb.hostchan(&["delete", path]).ok();
    }
    sb.assert_no_trace("/run/budget/d");
}

/// `hostchan metrics` is Prometheus's text format (`promtool check metrics` from Debian's
/// prometheus package finds no fault in it), with each channel's size and what its tmpfs has in
/// use seen from the host, the channels by state and lifetime, and the node's total.
#[test]
fn metrics_are_what_promtool_accepts_and_tell_the_truth() {
    let sb = Sandbox::boot();
    sb.start_scope("m.scope");
    sb.hostchan(&["create", "--scope", "m.scope", "/run/metrics/a:/a:rw:1M"])
        .ok();
    sb.hostchan(&["create", "--scope", "m.scope", "/run/metrics/b:/b:rw:2M"])
        .ok();
    fs::write(sb.path("/run/metrics/a/x"), vec![7u8; 64 << 10]).unwrap();
    let text = sb.hostchan(&["metrics"]).ok().stdout;
    let check = |text: &str| {
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; tests/run installs it)");
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&text);
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert_eq!(
        value("hostchan_channels{state=\"active\",lifetime=\"stop\"}"),
        2
    );
    let a = "{unit=\"run-metrics-a.mount\",host_path=\"/run/metrics/a\",container=\"\"}";
    assert_eq!(value(&format!("hostchan_channel_size_bytes{a}")), 1 << 20);
    assert_eq!(value(&format!("hostchan_channel_used_bytes{a}")), 64 << 10);
    assert!(value(&format!("hostchan_channel_inodes_used{a}")) >= 2);
    assert_eq!(value("hostchan_node_channels_size_bytes"), 3 << 20);
    assert!(value("hostchan_node_budget_bytes") > 0);

    for path in ["/run/metrics/a", "/run/metrics/b"] {
        sb.hostchan(&["delete", path]).ok();
    }
    let text = sb.hostchan(&["metrics"]).ok().stdout;
    check(&text);
    assert!(!text.contains("hostchan_channel_size_bytes{"), "{text}");
    assert!(
        text.contains("hostchan_node_channels_size_bytes 0\n"),
        "{text}"
    );
}
