//! The channel lifecycle against a real systemd, real D-Bus and real mounts.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use common::Sandbox;

const MIB: u64 = 1024 * 1024;

#[test]
fn create_bound_to_a_live_scope() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    let out = sb
        .hostchan(&[
            "create",
            "--scope",
            "ctr1.scope",
            "--container",
            "c0ffee",
            "/run/chan/c1:/chan:rw:1M",
        ])
        .ok();
    assert!(
        out.stdout
            .contains("Created channel /run/chan/c1 (run-chan-c1.mount)"),
        "{out:#?}"
    );

    // The mount, exactly as asked.
    let options = sb.mount_options("/run/chan/c1").expect("mounted");
    let (fstype, options) = options.split_once(' ').expect("fstype and options");
    assert_eq!(fstype, "tmpfs");
    let options: Vec<&str> = options.split(',').collect();
    for expected in ["rw", "nosuid", "nodev", "noexec", "size=1024k"] {
        assert!(
            options.contains(&expected),
            "{expected} missing from {options:?}"
        );
    }
    let dir = sb.path("/run/chan/c1");
    let meta = fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o1777);
    let stat = nix::sys::statvfs::statvfs(&dir).unwrap();
    assert_eq!(stat.blocks() * stat.fragment_size(), MIB);

    // size= is enforced: the second MiB does not fit.
    let mut file = fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    let err = loop {
        match file.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written <= MIB, "wrote past size=");
    };
    assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
    drop(file);

    // The units: bound to the scope, described for a person; under /run PID 1 removes the
    // directory at the stop (RuntimeDirectory=), and no cleanup unit is made.
    assert_eq!(sb.property("run-chan-c1.mount", "BindsTo"), "ctr1.scope");
    assert!(sb
        .property("run-chan-c1.mount", "After")
        .contains("ctr1.scope"));
    assert_eq!(
        sb.property("run-chan-c1.mount", "RuntimeDirectory"),
        "chan/c1"
    );
    assert_eq!(
        sb.property("run-chan-c1.mount", "OnSuccess"),
        "hostchan-prune.service"
    );
    assert_eq!(
        sb.unit_state("hostchan-cleanup@run-chan-c1.service"),
        "gone"
    );
    let status = sb.run(&["systemctl", "status", "--no-pager", "run-chan-c1.mount"]);
    assert!(
        status.stdout.contains(
            "Host channel /run/chan/c1 -> /chan (rw, 1M) of container c0ffee, bound to ctr1.scope"
        ),
        "{status:#?}"
    );
    sb.journal_with("run-chan-c1.mount", &["created channel /run/chan/c1"]);

    // The record.
    let record =
        fs::read_to_string(sb.path("/var/lib/hostchan/channels/run-chan-c1.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["container_path"], "/chan", "{record}");
    assert_eq!(record["owner"], "ctr1.scope", "{record}");
    assert_eq!(record["container"], "c0ffee", "{record}");
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

#[test]
fn stopping_the_scope_removes_the_channel() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/chan/new/c1:/chan"])
        .ok();
    fs::write(sb.path("/run/chan/new/c1/data"), "hello").unwrap();
    sb.run(&["systemctl", "stop", "ctr1.scope"]).ok();
    sb.wait_for(
        || !sb.path("/run/chan/new/c1").exists(),
        "the channel directory to go",
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/chan/new/c1");
    // The parent systemd made for the mount point goes too; the one that was there stays.
    assert!(!sb.path("/run/chan/new").exists());
    assert!(sb.path("/run").exists());
}

/// Outside /run a cleanup unit removes the directory: it stops beside the unmount and waits for
/// it. Stopped on its own, with the mount staying, it must give up soon and touch nothing;
/// `delete` still removes everything.
#[test]
fn a_cleanup_stopped_without_its_mount_removes_nothing() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    sb.hostchan(&["create", "--scope", "ctr1.scope", "/tmp/c1:/chan"])
        .ok();
    let mount = "tmp-c1.mount";
    let cleanup = "hostchan-cleanup@tmp-c1.service";
    assert_eq!(sb.property(mount, "RuntimeDirectory"), "");
    assert_eq!(sb.unit_state(cleanup), "active");
    let started = std::time::Instant::now();
    // Fails: the cleanup refuses. --no-block would not show that it ended soon.
    let stop = sb.run(&["systemctl", "stop", cleanup]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the cleanup waited {:?} for an unmount that was not coming: {stop:#?}",
        started.elapsed()
    );
    assert_eq!(sb.unit_state(mount), "active");
    assert!(sb.mount_options("/tmp/c1").is_some());
    assert_eq!(sb.record_files().len(), 1, "the record went");
    sb.journal_with(cleanup, &["is not stopping"]);

    sb.hostchan(&["delete", "/tmp/c1"]).ok();
    assert!(!sb.path("/tmp/c1").exists());
    sb.assert_no_trace("/tmp/c1");
}

#[test]
fn killing_the_container_process_removes_the_channel() {
    let sb = Sandbox::boot();
    let pid = sb.start_scope("ctr1.scope");
    sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/c1:/chan"])
        .ok();
    assert!(sb.mount_options("/run/c1").is_some());
    sb.run(&["kill", "-KILL", &pid.to_string()]).ok();
    sb.wait_for(
        || sb.unit_state("ctr1.scope") == "gone",
        "the scope to stop",
    );
    sb.wait_for(
        || !sb.path("/run/c1").exists(),
        "the channel directory to go",
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/c1");
}

/// Under /run, a stop forks no process per channel: PID 1 removes each directory itself (the
/// mount's RuntimeDirectory=), and the records and the parent directories made for them go by
/// the prune the stops start, once for many channels.
#[test]
fn a_pod_of_channels_goes_without_a_process_per_channel() {
    let sb = Sandbox::boot();
    sb.start_scope("pod.scope");
    let paths: Vec<String> = (0..8).map(|i| format!("/run/pod/ns/c{i}")).collect();
    for path in &paths {
        sb.hostchan(&[
            "create",
            "--scope",
            "pod.scope",
            &format!("{path}:/c:rw:1M"),
        ])
        .ok();
    }
    assert_eq!(sb.channel_units().len(), 8, "{:?}", sb.channel_units());
    assert_eq!(
        sb.units_matching("hostchan-cleanup@*"),
        Vec::<String>::new()
    );
    assert_eq!(sb.record_files().len(), 8);
    sb.run(&["systemctl", "stop", "pod.scope"]).ok();
    sb.wait_for(
        || paths.iter().all(|path| !sb.path(path).exists()),
        "PID 1 to remove the directories",
    );
    sb.wait_for(
        || sb.record_files().is_empty(),
        "the prune to remove the records",
    );
    // The parents hostchan made for them go too, only root's /run stays.
    sb.wait_for(|| !sb.path("/run/pod").exists(), "the made parents to go");
    for path in &paths {
        sb.assert_no_trace(path);
    }
    // Each record's removal is said by the prune run that removed it: count the runs by pid.
    let said: Vec<String> = paths
        .iter()
        .map(|path| format!("removed channel directory {path} and its record"))
        .collect();
    let needles: Vec<&str> = said.iter().map(String::as_str).collect();
    let lines = sb.journal_matching(&["-u", "hostchan-prune.service", "-o", "short"], &needles);
    let runs: std::collections::HashSet<&str> = lines
        .lines()
        .filter(|line| line.contains("removed channel directory"))
        .filter_map(|line| {
            line.split_once('[')
                .and_then(|(_, rest)| rest.split_once(']'))
        })
        .map(|(pid, _)| pid)
        .collect();
    assert!(
        !runs.is_empty() && runs.len() < paths.len(),
        "{} prune runs for {} channels:\n{lines}",
        runs.len(),
        paths.len()
    );
}

#[test]
fn delete_list_and_status() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    sb.hostchan(&[
        "create",
        "--scope",
        "ctr1.scope",
        "--container",
        "ctr1",
        "/run/chan/a:/a:ro:2M",
    ])
    .ok();
    sb.hostchan(&["create", "--unbound", "/run/chan/b:/b"]).ok();
    fs::write(sb.path("/run/chan/a/x"), vec![1u8; 8192]).unwrap();

    let list = sb.hostchan(&["list"]).ok().stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[3].starts_with(
            "2 channels, 66M in all, 8K used; the node's budget (node.max_total_size) "
        ),
        "{list}"
    );
    assert!(lines[0].starts_with("HOST PATH"), "{list}");
    let a: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        a,
        [
            "/run/chan/a",
            "/a",
            "ro",
            "2M",
            "8K",
            "ctr1.scope",
            "active",
            "(mounted)"
        ]
    );
    let b: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        b,
        [
            "/run/chan/b",
            "/b",
            "rw",
            "64M",
            "0B",
            "-",
            "active",
            "(mounted)"
        ]
    );

    let json = sb.hostchan(&["list", "--output", "json"]).ok().json();
    let channels = json.as_array().expect("a JSON array");
    assert_eq!(channels.len(), 2);
    assert_eq!(channels[0]["host_path"], "/run/chan/a");
    assert_eq!(channels[0]["container_path"], "/a");
    assert_eq!(channels[0]["mode"], "ro");
    assert_eq!(channels[0]["size"], 2 * MIB);
    assert_eq!(channels[0]["used"], 8192);
    assert_eq!(channels[0]["owner"], "ctr1.scope");
    assert_eq!(channels[0]["container"], "ctr1");
    assert_eq!(channels[0]["state"], "active");
    assert_eq!(channels[1]["owner"], serde_json::Value::Null);

    let status = sb.hostchan(&["status", "/run/chan/a"]).ok().stdout;
    for expected in [
        "Unit: run-chan-a.mount",
        "State: active (mounted)",
        "Container: /a (ro) in container ctr1",
        "Size: 2M (2097152 bytes), used 8K",
        "Owner: bound to ctr1.scope",
    ] {
        assert!(status.contains(expected), "{expected:?} not in:\n{status}");
    }
    let status = sb
        .hostchan(&["status", "--output", "json", "run-chan-b.mount"])
        .ok()
        .json();
    assert_eq!(status["host_path"], "/run/chan/b");
    assert_eq!(status["unit"], "run-chan-b.mount");

    let deleted = sb.hostchan(&["delete", "/run/chan/a"]).ok();
    assert!(
        deleted.stdout.contains("Deleted channel /run/chan/a"),
        "{deleted:#?}"
    );
    // delete returns only when the directory is gone.
    assert!(!sb.path("/run/chan/a").exists());
    assert_eq!(sb.unit_state("run-chan-a.mount"), "gone");
    assert_eq!(
        sb.unit_state("ctr1.scope"),
        "active",
        "the owner must not be touched"
    );
    let deleted = sb
        .hostchan(&["delete", "--output", "json", "run-chan-b.mount"])
        .ok()
        .json();
    assert_eq!(deleted["state"], "deleted");
    sb.assert_no_trace("/run/chan/b");
    assert_eq!(sb.hostchan(&["list"]).ok().stdout, "No channels.\n");
    assert_eq!(
        sb.hostchan(&["list", "--output", "json"]).ok().json(),
        serde_json::json!([])
    );

    // Names that are not channels: clear failure, nothing touched.
    fs::create_dir_all(sb.path("/run/not-a-channel")).unwrap();
    for target in ["/run/not-a-channel", "/run/chan/a", "run-x.mount"] {
        let out = sb.hostchan(&["delete", target]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(
            out.stderr.starts_with("hostchan: no channel at "),
            "{out:#?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        let out = sb.hostchan(&["status", "--output", "json", target]);
        assert_eq!(out.code, 1);
        assert!(out.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("no channel at "));
    }
    let out = sb.hostchan(&["cleanup", "--id", "0123", "/run/not-a-channel"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        sb.path("/run/not-a-channel").is_dir(),
        "a directory that is not a channel was removed"
    );
}

#[test]
fn bad_specs_and_owners_leave_nothing_behind() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    fs::create_dir_all(sb.path("/run/exists")).unwrap();
    fs::write(sb.path("/run/file"), "").unwrap();
    std::os::unix::fs::symlink("/nowhere", sb.path("/run/dangling")).unwrap();
    std::os::unix::fs::symlink("/run/exists", sb.path("/run/link")).unwrap();
    let before = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;

    let cases: &[(&[&str], i32, &str)] = &[
        (&["/run/x"], 2, "invalid spec \"/run/x\": has 1 field(s)"),
        (&["/run/x:/a:rw:1M:extra"], 2, "invalid spec"),
        (
            &["run/x:/a"],
            2,
            "invalid host path \"run/x\": must be an absolute path",
        ),
        (&["/run/x:a"], 2, "invalid container path \"a\""),
        (&["/run/x:/"], 2, "invalid container path \"/\""),
        (&["/run/x:/a:rx"], 2, "invalid mode \"rx\""),
        (&["/run/x:/a:rw:12q"], 2, "invalid size \"12q\""),
        (
            &["/run/x:/a:rw:1"],
            2,
            "below the minimum of one page (4096 bytes)",
        ),
        (
            &["/run/x:/a:rw:100t"],
            2,
            "above the maximum of half the physical memory",
        ),
        (&["/run/../x:/a"], 2, "must not contain a '..' component"),
        (&["/run/x\ny:/a"], 2, "control character"),
        (&["/:/a"], 2, "must not be /"),
        (&["/etc/x:/a"], 2, "is inside /etc"),
        (&["/proc/x:/a"], 2, "is inside /proc"),
        (&["/run/systemd/x:/a"], 2, "is inside /run/systemd"),
        (
            &["/var/lib/hostchan/x:/a"],
            2,
            "is inside /var/lib/hostchan",
        ),
        (&["/run/exists:/a"], 2, "already exists (a directory)"),
        (&["/run/file:/a"], 2, "already exists (a file)"),
        (
            &["/run/file/x:/a"],
            2,
            "has an ancestor that is not a directory",
        ),
        (&["/run/dangling:/a"], 2, "already exists (a symlink)"),
        (
            &["/run/link/x:/a"],
            2,
            "has a symlink as ancestor (/run/link)",
        ),
    ];
    for (spec, code, message) in cases {
        for owner in [["--scope", "ctr1.scope"], ["--unbound", "-v"]] {
            let mut args = vec!["create"];
            args.extend_from_slice(&owner);
            args.extend_from_slice(spec);
            let out = sb.hostchan(&args);
            assert_eq!(out.code, *code, "{spec:?}: {out:#?}");
            assert!(out.stderr.contains(message), "{spec:?}: {out:#?}");
            assert_eq!(
                out.stderr.lines().count(),
                1,
                "{spec:?}: not one line: {out:#?}"
            );
            assert_eq!(out.stdout, "");
            args.extend_from_slice(&["--output", "json"]);
            let out = sb.hostchan(&args);
            assert_eq!(out.code, *code, "{spec:?}: {out:#?}");
            assert!(
                out.json()["error"].as_str().unwrap().contains(message),
                "{out:#?}"
            );
        }
    }

    let owners: &[(&[&str], i32, &str)] = &[
        (
            &["--scope", "nosuch.scope"],
            1,
            "owner unit nosuch.scope does not exist",
        ),
        (
            &["--scope", "remote-fs.target"],
            1,
            "owner unit remote-fs.target is inactive (dead)",
        ),
        (
            &["--scope", "not a unit"],
            2,
            "invalid scope \"not a unit\"",
        ),
        (
            &[],
            2,
            "no owner given: pass --scope UNIT, --pid PID or --unbound",
        ),
    ];
    for (owner, code, message) in owners {
        let mut args = vec!["create"];
        args.extend_from_slice(owner);
        args.push("/run/chan/x:/a");
        let out = sb.hostchan(&args);
        assert_eq!(out.code, *code, "{owner:?}: {out:#?}");
        assert!(out.stderr.contains(message), "{owner:?}: {out:#?}");
        args.extend_from_slice(&["--output", "json"]);
        let out = sb.hostchan(&args);
        assert_eq!(out.code, *code, "{owner:?}: {out:#?}");
        assert!(
            out.json()["error"].as_str().unwrap().contains(message),
            "{out:#?}"
        );
    }

    // hostchan makes the mount point itself: on a read-only file system it says so.
    sb.sh("mkdir -p /run/ro && mount -t tmpfs -o ro tmpfs /run/ro")
        .ok();
    let out = sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/ro/x:/a"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("cannot make /run/ro/x: Read-only file system"),
        "{out:#?}"
    );
    sb.run(&["umount", "/run/ro"]).ok();
    sb.run(&["rmdir", "/run/ro"]).ok();

    // A job that fails inside systemd (its /bin/mount fails, in this sandbox only) is rolled
    // back, the directories hostchan made included, and the error points at the journal.
    sb.sh("mount --bind /bin/false /usr/bin/mount").ok();
    let out = sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/jf/x:/a"]);
    sb.run(&["umount", "/usr/bin/mount"]).ok();
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("systemd could not start run-jf-x.mount (job result: failed)"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("journalctl -u run-jf-x.mount"),
        "{out:#?}"
    );
    assert!(!sb.path("/run/jf").exists(), "made directories left");

    sb.wait_for(|| sb.channel_units().is_empty(), "the failed unit to go");
    assert_eq!(sb.record_files(), Vec::<String>::new());
    assert!(!sb.path("/run/x").exists() && !sb.path("/run/chan").exists());
    assert!(!sb.path("/run/ro/x").exists());
    let after = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;
    assert_eq!(before, after, "mounts changed");
    assert_eq!(sb.unit_state("ctr1.scope"), "active");
}

#[test]
fn racing_creates_for_one_path_have_one_winner() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    for round in 0..5 {
        let path = format!("/run/race{round}");
        let spec = format!("{path}:/chan");
        let racers: Vec<_> = (0..2)
            .map(|_| {
                sb.command(&[common::HOSTCHAN, "create", "--scope", "ctr1.scope", &spec])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = racers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let winners = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(winners, 1, "round {round}: {outputs:#?}");
        let loser = outputs.iter().find(|o| !o.status.success()).unwrap();
        let message = String::from_utf8_lossy(&loser.stderr);
        assert!(
            message.contains("is already a channel (run-race")
                || message.contains("is being made a channel (run-race")
                || message.contains("already exists (a directory)"),
            "round {round}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(
            sb.mount_options(&path).is_some(),
            "the winner's channel must stand"
        );
        assert!(sb
            .path(&format!("/var/lib/hostchan/channels/run-race{round}.json"))
            .exists());
    }
}

#[test]
fn channels_survive_daemon_reload_and_reexec() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/chan/c1:/chan"])
        .ok();
    for command in ["daemon-reload", "daemon-reexec"] {
        sb.run(&["systemctl", command]).ok();
        sb.wait_for(
            || sb.run(&["systemctl", "is-system-running"]).stdout.trim() == "running",
            "systemd to settle",
        );
        assert_eq!(
            sb.unit_state("run-chan-c1.mount"),
            "active",
            "after {command}"
        );
        assert_eq!(
            sb.property("run-chan-c1.mount", "BindsTo"),
            "ctr1.scope",
            "after {command}"
        );
        assert_eq!(
            sb.property("run-chan-c1.mount", "RuntimeDirectory"),
            "chan/c1"
        );
        assert!(sb.mount_options("/run/chan/c1").is_some());
        assert_eq!(
            sb.hostchan(&["list", "--output", "json"]).ok().json()[0]["state"],
            "active"
        );
    }
    sb.run(&["systemctl", "stop", "ctr1.scope"]).ok();
    sb.wait_for(|| !sb.path("/run/chan").exists(), "the channel to go");
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/chan/c1");
}

#[test]
fn a_300_character_path_gets_a_hashed_unit_name() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    let path = format!("/run/long/{}/{}b", "a".repeat(150), "b-".repeat(69));
    assert_eq!(path.len(), 300);
    let out = sb
        .hostchan(&[
            "create",
            "--output",
            "json",
            "--scope",
            "ctr1.scope",
            &format!("{path}:/chan:rw:4k"),
        ])
        .ok()
        .json();
    let unit = out["unit"].as_str().unwrap().to_owned();
    assert_eq!(unit.len(), 255, "{unit}");
    assert!(
        unit.starts_with("run-long-aaaa") && unit.ends_with(".mount"),
        "{unit}"
    );
    // systemd itself agrees: it refuses a Where= that does not match the unit name.
    assert_eq!(sb.property(&unit, "Where"), path);
    assert_eq!(sb.unit_state(&unit), "active");
    assert!(sb.mount_options(&path).unwrap().contains("size=4k"));
    let status = sb.hostchan(&["status", &path]).ok().stdout;
    assert!(status.contains(&unit), "{status}");
    sb.hostchan(&["delete", &unit]).ok();
    sb.assert_no_trace(&path);
    assert!(!sb.path("/run/long").exists());
}

#[test]
fn poststop_hook_and_delete_container_remove_a_containers_channels() {
    let sb = Sandbox::boot();
    for (path, container) in [
        ("/run/p/a", "c9"),
        ("/run/p/b", "c9"),
        ("/run/p/c", "other"),
    ] {
        sb.hostchan(&[
            "create",
            "--unbound",
            "--container",
            container,
            &format!("{path}:/x"),
        ])
        .ok();
    }
    // An engine without systemd scopes: poststop removes the container's channels.
    let state = r#"{"ociVersion":"1.0.2","id":"c9","status":"stopped","bundle":"/nonexistent"}"#;
    let out = sb
        .sh(&format!(
            "echo '{state}' | {} oci-hook --output json",
            common::HOSTCHAN
        ))
        .ok()
        .json();
    assert_eq!(out["stage"], "poststop");
    assert_eq!(out["channels"].as_array().unwrap().len(), 2, "{out}");
    assert!(!sb.path("/run/p/a").exists() && !sb.path("/run/p/b").exists());
    assert!(
        sb.mount_options("/run/p/c").is_some(),
        "another container's channel was touched"
    );
    // Nothing left to remove is a success too.
    sb.sh(&format!("echo '{state}' | {} oci-hook", common::HOSTCHAN))
        .ok();

    let out = sb
        .hostchan(&["delete", "--container", "other", "--output", "json"])
        .ok()
        .json();
    assert_eq!(out["container"], "other");
    assert_eq!(out["deleted"].as_array().unwrap().len(), 1);
    sb.assert_no_trace("/run/p/c");
    assert!(!sb.path("/run/p").exists());
    assert_eq!(
        sb.hostchan(&["delete", "--container", "other"]).ok().stdout,
        "Container other has no channels; nothing was deleted.\n"
    );
}

/// systemd reports the end of a job on the bus connection it had when the job was queued. A
/// daemon-reexec while a create waits for its mount (held back by PID 1's mount-event rate
/// limit, made hot first) gives PID 1 a new connection and name: the create still ends, with
/// the channel up, instead of waiting for a report that never comes from the name it expects.
#[test]
fn a_create_waiting_through_a_daemon_reexec_ends() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let sb = Sandbox::boot();
    sb.start_scope("ctr-rx.scope");
    sb.sh("mkdir -p /run/hot && for i in 1 2 3 4 5 6 7 8; do mount -t tmpfs tmpfs /run/hot && umount /run/hot; sleep 0.01; done")
        .ok();
    let mut create = sb
        .command(&[
            common::HOSTCHAN,
            "create",
            "--scope",
            "ctr-rx.scope",
            "/run/rx:/x:rw:1M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sb.run(&["systemctl", "daemon-reexec"]).ok();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = create.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = create.kill();
            let _ = create.wait();
            panic!("create still waits 20 s after the daemon-reexec");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        sb.mount_options("/run/rx").is_some(),
        "/run/rx is not mounted"
    );
    sb.hostchan(&["delete", "/run/rx"]).ok();
    sb.assert_no_trace("/run/rx");
}
