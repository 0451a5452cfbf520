//! Crashes and concurrency never leave a channel without its record, nor a record without its
//! channel: hostchan killed at each step of create (fail points, compiled into test builds
//! only), killed at random, and racing itself, on the sandboxed systemd.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{runc_bundle, Sandbox, TempDir, HOSTCHAN};

/// Files in the records directory other than the lock files: records and anything a killed
/// writer left.
fn record_dir_files(sb: &Sandbox) -> Vec<String> {
    sb.record_files()
}

/// Nothing of any channel is left: no channel unit, record, stray file, or mount or directory
/// under `root`.
#[track_caller]
fn assert_nothing_left(sb: &Sandbox, root: &str) {
    sb.wait_for(|| sb.channel_units().is_empty(), "every channel unit to go");
    let records = record_dir_files(sb);
    if !records.is_empty() {
        // What gc says of them, and what is on disk, for the failure to explain itself.
        let gc = sb.hostchan(&["--output", "json", "gc"]);
        let tree = sb.run(&["find", root, "-printf", "%p %i %u %m\n"]);
        let mounts = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;
        panic!("records left: {records:?}\ngc again: {gc:#?}\n{root}: {tree:#?}\nmounts: {mounts}");
    }
    let mounts = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;
    assert!(
        !mounts.lines().any(|m| m.starts_with(root)),
        "mounts left under {root}:\n{mounts}"
    );
    if sb.path(root).exists() {
        // What is left and hostchan's last lines, for a failure to explain itself.
        let tree = sb.run(&["find", root, "-printf", "%p %i %u %m\n"]).stdout;
        let journal = sb
            .run(&[
                "journalctl",
                "--no-pager",
                "-o",
                "short-monotonic",
                "-n",
                "60",
                "SYSLOG_IDENTIFIER=hostchan",
            ])
            .stdout;
        panic!("{root} left: {tree}\n{journal}");
    }
}

fn spawn(sb: &Sandbox, argv: &[&str]) -> Child {
    sb.command(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A crash at each step of create, then "the owner stops, gc runs": nothing is left. gc run
/// right after the crash keeps what systemd still has.
#[test]
fn a_crash_at_any_step_of_create_leaves_nothing_after_the_owner_and_gc() {
    let sb = Sandbox::boot();
    // systemd's mount takes a second (in this sandbox only), so that gc runs while the killed
    // create's mount job is still queued.
    sb.sh("cp /usr/bin/mount /run/real-mount && printf '#!/bin/sh\\nsleep 1\\nexec /run/real-mount \"$@\"\\n' > /run/slow-mount && chmod +x /run/slow-mount && mount --bind /run/slow-mount /usr/bin/mount")
        .ok();
    for (n, step) in ["after-record", "after-dirs", "after-job-queued"]
        .iter()
        .enumerate()
    {
        let scope = format!("crash{n}.scope");
        sb.start_scope(&scope);
        let path = format!("/run/crash/c{n}");
        let out = sb.run(&[
            "env",
            &format!("HOSTCHAN_FAIL_AT={step}"),
            HOSTCHAN,
            "create",
            "--scope",
            &scope,
            &format!("{path}/ch:/c:rw:1M"),
        ]);
        assert_ne!(out.code, 0, "{step}: hostchan was not killed: {out:#?}");
        // gc at once: whatever systemd has of the channel stays.
        sb.hostchan(&["gc"]).ok();
        if *step == "after-job-queued" {
            assert_eq!(
                sb.mount_options(&format!("{path}/ch")),
                None,
                "the mount was not slow enough for this test"
            );
            assert!(
                !record_dir_files(&sb).is_empty(),
                "gc took a channel systemd still had for a leftover"
            );
            sb.wait_for(
                || sb.mount_options(&format!("{path}/ch")).is_some(),
                "the queued mount to happen",
            );
        }
        sb.run(&["systemctl", "stop", &scope]).ok();
        sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
        sb.hostchan(&["gc"]).ok();
        assert_nothing_left(&sb, "/run/crash");
    }

    sb.run(&["umount", "/usr/bin/mount"]).ok();

    // Killed just before attaching in the container: the host side is up, and goes with the
    // container.
    let dir = TempDir::new("crash-attach");
    let bundle = runc_bundle(&dir.0, "cr1", |_| {});
    sb.runc_start(&bundle, "cr1").ok();
    let pid = sb.runc_pid("cr1");
    let out = sb.run(&[
        "env",
        "HOSTCHAN_FAIL_AT=before-attach",
        HOSTCHAN,
        "create",
        "--pid",
        &pid,
        "/run/crash/a:/a",
    ]);
    assert_ne!(out.code, 0, "{out:#?}");
    sb.hostchan(&["gc"]).ok();
    assert!(sb.mount_options("/run/crash/a").is_some());
    sb.runc(&["delete", "--force", "cr1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.hostchan(&["gc"]).ok();
    assert_nothing_left(&sb, "/run/crash");
}

/// A small deterministic generator, so that a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// hostchan killed at random moments of create, delete, gc and the hook, many times over; once
/// the owners stop and gc runs, nothing is left.
#[test]
fn random_kills_leave_nothing_behind() {
    let sb = Sandbox::boot();
    sb.start_scope("rk.scope");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let paths: Vec<String> = (0..4).map(|n| format!("/run/rk/p{n}")).collect();
    let poststop = r#"{"ociVersion":"1.0.2","id":"rk","status":"stopped","bundle":"/b"}"#;
    for round in 0..40 {
        let path = &paths[rng.below(paths.len() as u64) as usize];
        let spec = format!("{path}:/c:rw:1M");
        let children = vec![
            spawn(
                &sb,
                &[
                    HOSTCHAN,
                    "create",
                    "--scope",
                    "rk.scope",
                    "--container",
                    "rk",
                    &spec,
                ],
            ),
            match rng.below(3) {
                0 => spawn(&sb, &[HOSTCHAN, "delete", path]),
                1 => spawn(&sb, &[HOSTCHAN, "gc"]),
                _ => spawn(
                    &sb,
                    &[
                        "sh",
                        "-c",
                        &format!("echo '{poststop}' | {HOSTCHAN} oci-hook"),
                    ],
                ),
            },
        ];
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        // Two times in three, the newest hostchan dies (nsenter would not pass a signal on).
        if rng.below(3) != 0 {
            sb.run(&["pkill", "-KILL", "-n", "-x", "hostchan"]);
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("panicked"),
                "round {round}: hostchan panicked: {stderr}"
            );
        }
        // The invariant at every step: a mounted path has its record. A killed delete leaves
        // its stop jobs running (the unmount, then the cleanup unit removing the record): the
        // state is read once systemd has no job left, or a mount seen going would be taken for
        // one without its record.
        sb.wait_for_no_jobs();
        for path in &paths {
            if sb.mount_options(path).is_some() {
                let status = sb.hostchan(&["status", "--output", "json", path]);
                if status.code != 0 {
                    let unit = hostchan::mount_unit_name(std::path::Path::new(path));
                    let journal = sb.run(&[
                        "journalctl",
                        "--no-pager",
                        "-o",
                        "short-monotonic",
                        "-n",
                        "80",
                    ]);
                    panic!(
                        "round {round}: {path} is mounted without its record: {status:#?}\n{}\nrecords: {:?}\n{}",
                        sb.run(&["systemctl", "status", "--no-pager", &unit]).stdout,
                        sb.record_files(),
                        journal.stdout
                    );
                }
            }
        }
    }
    sb.run(&["systemctl", "stop", "rk.scope"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.hostchan(&["gc"]).ok();
    assert_nothing_left(&sb, "/run/rk");
}

/// A delete racing a new create for the same path removes only the channel it was asked to:
/// held after it stopped the old channel's units, while a new channel is made at the path, it
/// leaves the new one alone.
#[test]
fn delete_and_create_racing_for_a_path_keep_record_and_channel_together() {
    let sb = Sandbox::boot();
    sb.start_scope("race.scope");
    let spec = "/run/dr/held:/c:rw:1M";
    sb.hostchan(&["create", "--scope", "race.scope", spec]).ok();
    let delete = spawn(
        &sb,
        &[
            "env",
            "HOSTCHAN_PAUSE_AT=delete-after-stop:1500",
            HOSTCHAN,
            "delete",
            "/run/dr/held",
        ],
    );
    sb.wait_for(
        || sb.mount_options("/run/dr/held").is_none() && !sb.path("/run/dr/held").exists(),
        "the old channel to go",
    );
    sb.hostchan(&["create", "--scope", "race.scope", spec]).ok();
    let deleted = delete.wait_with_output().unwrap();
    assert!(deleted.status.success(), "{deleted:#?}");
    assert!(
        sb.mount_options("/run/dr/held").is_some(),
        "the new channel went"
    );
    sb.hostchan(&["status", "/run/dr/held"]).ok();
    sb.hostchan(&["delete", "/run/dr/held"]).ok();

    for round in 0..12 {
        let path = "/run/dr/c";
        let spec = format!("{path}:/c:rw:1M");
        sb.hostchan(&["create", "--scope", "race.scope", &spec])
            .ok();
        let delete = spawn(&sb, &[HOSTCHAN, "delete", path]);
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let create = spawn(&sb, &[HOSTCHAN, "create", "--scope", "race.scope", &spec]);
        let deleted = delete.wait_with_output().unwrap();
        let created = create.wait_with_output().unwrap();
        assert!(deleted.status.success(), "round {round}: {deleted:#?}");
        let mounted = sb.mount_options(path).is_some();
        let status = sb.hostchan(&["status", "--output", "json", path]);
        if mounted {
            assert_eq!(
                status.code, 0,
                "round {round}: mounted, no record: {status:#?}"
            );
            assert_eq!(status.json()["state"], "active", "round {round}");
        } else {
            assert_ne!(
                status.code, 0,
                "round {round}: a record, no mount: {status:#?}"
            );
            assert!(!sb.path(path).exists(), "round {round}: directory left");
        }
        if created.status.success() {
            sb.hostchan(&["delete", path]).ok();
        }
    }
    sb.run(&["systemctl", "stop", "race.scope"]).ok();
    assert_nothing_left(&sb, "/run/dr");
}

/// A parent and a child path created at the same moment never both become channels.
#[test]
fn no_channel_inside_another_whatever_the_timing() {
    let sb = Sandbox::boot();
    sb.start_scope("nest.scope");
    let mut both = 0;
    for round in 0..20 {
        let parent = format!("/run/nest/r{round}");
        let child = format!("{parent}/inner");
        let a = spawn(
            &sb,
            &[
                HOSTCHAN,
                "create",
                "--scope",
                "nest.scope",
                &format!("{parent}:/p"),
            ],
        );
        let b = spawn(
            &sb,
            &[
                HOSTCHAN,
                "create",
                "--scope",
                "nest.scope",
                &format!("{child}:/c"),
            ],
        );
        let a = a.wait_with_output().unwrap().status.success();
        let b = b.wait_with_output().unwrap().status.success();
        if a && b {
            both += 1;
        }
        assert!(a || b, "round {round}: neither was made");
    }
    assert_eq!(both, 0, "a channel inside another in {both} of 20 rounds");
    // The worst order, made to happen: the child's record is written first, the parent is
    // made while the child waits, then the child goes on.
    let child = spawn(
        &sb,
        &[
            "env",
            "HOSTCHAN_PAUSE_AT=after-record:1000",
            HOSTCHAN,
            "create",
            "--scope",
            "nest.scope",
            "/run/nest/held/inner:/c",
        ],
    );
    sb.wait_for(
        || sb.record_files().iter().any(|f| f.contains("held")),
        "the child's record",
    );
    let parent = sb.hostchan(&["create", "--scope", "nest.scope", "/run/nest/held:/p"]);
    let child = child.wait_with_output().unwrap();
    assert!(
        !(parent.code == 0 && child.status.success()),
        "both made: {parent:#?} {child:#?}"
    );
    assert!(
        parent
            .stderr
            .contains("holds the channel /run/nest/held/inner"),
        "{parent:#?}"
    );
    sb.run(&["systemctl", "stop", "nest.scope"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.hostchan(&["gc"]).ok();
    // The loser of a round may leave the winner's parent: only root's empty directories, and
    // gc never knew them; everything hostchan recorded is gone.
    assert_eq!(record_dir_files(&sb), Vec::<String>::new());
}

/// A killed create never blocks a retry (issue 20, class 7): killed at each step of create, and
/// then at random moments, the same create run again at once (no gc, no delete) succeeds; it
/// recognises the half-made channel by its creator's lock that nobody holds, takes it away and
/// makes the channel anew. "already a channel" is said only of a live channel, and names it.
#[test]
fn a_killed_create_never_blocks_a_retry() {
    let sb = Sandbox::boot();
    sb.start_scope("retry.scope");
    let create = |env: &str, path: &str| {
        sb.run(&[
            "env",
            env,
            HOSTCHAN,
            "create",
            "--scope",
            "retry.scope",
            &format!("{path}:/c:rw:1M"),
        ])
    };
    for (n, step) in ["after-record", "after-dirs", "after-job-queued"]
        .iter()
        .enumerate()
    {
        let path = format!("/run/retry/s{n}");
        let killed = create(&format!("HOSTCHAN_FAIL_AT={step}"), &path);
        assert_ne!(killed.code, 0, "{step}: not killed: {killed:#?}");
        create("X=1", &path).ok();
        assert!(sb.mount_options(&path).is_some(), "{step}");
        let again = create("X=1", &path);
        assert_eq!(again.code, 1, "{again:#?}");
        assert!(
            again
                .stderr
                .contains(&format!("host path {path} is already a channel")),
            "{again:#?}"
        );
        sb.hostchan(&["delete", &path]).ok();
        sb.assert_no_trace(&path);
    }
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut retried_after_a_kill = 0;
    for round in 0..30 {
        let path = format!("/run/retry/r{}", round % 3);
        let first = spawn(
            &sb,
            &[
                HOSTCHAN,
                "create",
                "--scope",
                "retry.scope",
                &format!("{path}:/c:rw:1M"),
            ],
        );
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        sb.run(&["pkill", "-KILL", "-n", "-x", "hostchan"]);
        let first = first.wait_with_output().unwrap();
        let retry = create("X=1", &path);
        if retry.code == 0 {
            retried_after_a_kill += u32::from(!first.status.success());
        } else {
            // The first had its units started before the kill (perhaps while it was exiting):
            // the retry meets a live channel, and names it; its mount is there once PID 1 has
            // run the start job it queued (under the mount rate limit, up to a second later).
            assert!(
                retry
                    .stderr
                    .contains(&format!("host path {path} is already a channel")),
                "round {round}: the retry was blocked: {retry:#?}"
            );
            sb.wait_for(
                || sb.mount_options(&path).is_some(),
                "the killed create's queued mount",
            );
        }
        sb.hostchan(&["delete", &path]).ok();
        // A create killed before it wrote its record leaves only its empty lock file, and one
        // killed while replacing a record its staged copy: they block nothing, and gc removes
        // them.
        sb.wait_for(|| sb.channel_units().is_empty(), "the channel unit to go");
        assert!(sb.mount_options(&path).is_none(), "round {round}");
        assert!(!sb.path(&path).exists(), "round {round}");
        let records: Vec<String> = sb
            .record_files()
            .into_iter()
            .filter(|name| !name.starts_with(".creating-") && !name.starts_with(".new-"))
            .collect();
        assert_eq!(records, Vec::<String>::new(), "round {round}");
    }
    sb.hostchan(&["gc"]).ok();
    assert_eq!(sb.record_files(), Vec::<String>::new());
    assert!(
        retried_after_a_kill >= 10,
        "only {retried_after_a_kill} kills hit"
    );
}
