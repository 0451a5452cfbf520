//! hostchan against an attacker: container creators (annotations, specs, container ids) and
//! local users (racing the host path, planting records, forging D-Bus signals), on the
//! sandboxed systemd. Each test names the promise of the README's security model it shows.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{runc_bundle, Sandbox, TempDir, HOSTCHAN};

fn as_nobody(sb: &Sandbox, script: &str) -> common::Run {
    sb.run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        script,
    ])
}

/// What systemd and the kernel get is exactly what was checked: characters that systemd would
/// expand or rewrite are refused by name; every other character reaches systemd literally and
/// stays literal through daemon-reload and daemon-reexec, up to the cleanup.
#[test]
fn paths_reach_systemd_literally_or_not_at_all() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    let before = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;
    let refused: &[(&str, &str)] = &[
        ("/run/sys${X}temd:/c", "'$'"),
        ("/run/chan/${X}../${X}../etc:/c", "'$'"),
        ("/run/a$$b:/c", "'$'"),
        ("/run/a%n:/c", "'%'"),
        ("/run/a;b:/c", "';'"),
        ("/run/a\\x2db:/c", "'\\\\'"),
        ("/run/a\"b:/c", "'\"'"),
        ("/run/a'b:/c", "contains '\\''"),
        ("/run/trailing :/c", "ends with whitespace"),
        ("/run/ok:/c$x", "invalid container path"),
    ];
    for (spec, named) in refused {
        let out = sb.hostchan(&["create", "--scope", "ctr1.scope", spec]);
        assert_eq!(out.code, 2, "{spec}: {out:#?}");
        assert!(out.stderr.contains(named), "{spec}: {out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{spec}: {out:#?}");
    }
    assert!(sb.channel_units().is_empty());
    assert_eq!(sb.record_files(), Vec::<String>::new());
    assert_eq!(before, sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout);

    let literal = [
        "/run/odd/a b",
        "/run/odd/x,y=z#!&*?[]{}~@+-",
        "/run/odd/.hidden",
        "/run/odd/ü",
        "/run/odd/tab-free\u{a0}nbsp",
    ];
    for path in literal {
        sb.hostchan(&[
            "create",
            "--scope",
            "ctr1.scope",
            "--container",
            "c1",
            &format!("{path}:/c:rw:1M"),
        ])
        .ok();
    }
    for step in ["daemon-reload", "daemon-reexec"] {
        sb.run(&["systemctl", step]).ok();
        for path in literal {
            let unit = sb
                .hostchan(&["status", "--output", "json", path])
                .ok()
                .json()["unit"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(sb.unit_state(&unit), "active", "{path} after {step}");
            assert_eq!(sb.property(&unit, "Where"), path, "after {step}");
            assert!(sb.mount_options(path).is_some(), "{path} after {step}");
        }
    }
    // The cleanup, run by systemd from the reloaded unit, is told the same path.
    sb.run(&["systemctl", "stop", "ctr1.scope"]).ok();
    sb.wait_for(
        || literal.iter().all(|p| !sb.path(p).exists()),
        "every odd channel to go with its owner",
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    // The records and /run/odd go by the prune the stops start, a moment after the units.
    sb.wait_for(
        || sb.record_files().is_empty() && !sb.path("/run/odd").exists(),
        "the prune to remove the records and /run/odd",
    );
}

/// The hook validates like the CLI: container ids and annotation names, one line each.
#[test]
fn the_hook_refuses_what_the_cli_refuses() {
    let sb = Sandbox::boot();
    let hook = |state: &str| {
        sb.sh(&format!(
            "printf '%s' '{state}' | {HOSTCHAN} oci-hook --output json"
        ))
    };
    let cases = [
        (
            r#"{"id":"c1\nWants=x.service","status":"creating","pid":1,"bundle":"/b","annotations":{"io.hostchan.channel":"/run/hostchan/a:/a"}}"#,
            "invalid container id",
        ),
        (
            r#"{"id":"c1\nWants=x.service","status":"stopped","bundle":"/b"}"#,
            "invalid container id",
        ),
        (
            r#"{"id":"c1","status":"creating","pid":1,"bundle":"/b","annotations":{"io.hostchan.channel.a b":"/run/hostchan/a:/a"}}"#,
            "invalid annotation",
        ),
    ];
    for (state, expected) in cases {
        let out = hook(state);
        assert_eq!(out.code, 2, "{out:#?}");
        let json = out.json();
        let error = json["error"].as_str().unwrap();
        assert!(error.contains(expected), "{out:#?}");
        assert!(!error.contains('\n'), "{out:#?}");
        assert_eq!(json["kind"], "invalid");
    }
    // Bytes that are not UTF-8, on stdin or in an argument (legal in Linux paths): usage
    // errors on one line, never a panic.
    let out = sb.sh(&format!("printf '\\377' | {HOSTCHAN} oci-hook"));
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("not UTF-8"), "{out:#?}");
    let out = sb.sh(&format!(
        "{HOSTCHAN} create --unbound \"$(printf '/run/\\377:/x')\""
    ));
    assert_eq!(out.code, 2, "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(out.stderr.contains("invalid UTF-8"), "{out:#?}");
    assert!(sb.channel_units().is_empty());
}

/// The host path is made safely: an ancestor others can write is refused; in a sticky
/// directory anyone can write to (/tmp), a user racing hostchan with a symlink never gets the
/// mount or a directory outside the channel, in any of many tries.
#[test]
fn a_user_racing_the_host_path_never_redirects_it() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    sb.sh("mkdir -p /run/theirs && chown 65534:65534 /run/theirs")
        .ok();
    let out = sb.hostchan(&["create", "--scope", "ctr1.scope", "/run/theirs/c:/c"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr
            .contains("has an ancestor others can change (/run/theirs: uid 65534, mode 0755)"),
        "{out:#?}"
    );
    as_nobody(&sb, "mkdir /tmp/planted").ok();
    let out = sb.hostchan(&["create", "--scope", "ctr1.scope", "/tmp/planted/c:/c"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("in a directory anyone can write to"),
        "{out:#?}"
    );

    // The attacker, as nobody, keeps putting a symlink to /srv/target where hostchan makes
    // /tmp/race/<n>/, and keeps trying to move it away once made.
    sb.sh("mkdir -p /srv/target").ok();
    let mut attacker = sb
        .command(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            "while :; do for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19; do \
             ln -s /srv/target /tmp/race$n 2>/dev/null; mv /tmp/race$n /tmp/moved$n 2>/dev/null; \
             ln -s /srv/target /tmp/race$n 2>/dev/null; done; done",
        ])
        .spawn()
        .unwrap();
    let mut made = 0;
    for n in 0..20 {
        let out = sb.hostchan(&[
            "create",
            "--scope",
            "ctr1.scope",
            &format!("/tmp/race{n}/c:/c:rw:1M"),
        ]);
        if out.code == 0 {
            made += 1;
            let meta = fs::symlink_metadata(sb.path(&format!("/tmp/race{n}"))).unwrap();
            assert!(meta.is_dir() && meta.uid() == 0, "round {n}");
            assert!(sb.mount_options(&format!("/tmp/race{n}/c")).is_some());
        } else {
            assert_eq!(out.code, 2, "round {n}: {out:#?}");
        }
    }
    sb.sh("pkill -KILL -u 65534; true").ok();
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(
        fs::read_dir(sb.path("/srv/target")).unwrap().count(),
        0,
        "something was made through the symlink"
    );
    let mounts = sb.run(&["findmnt", "-rn", "-o", "TARGET"]).stdout;
    assert!(!mounts.contains("/srv/target"), "{mounts}");
    eprintln!("{made} of 20 creates won the race; the others were refused");
    // Once made, nobody can move hostchan's directories in /tmp: cleanup removes exactly them.
    sb.run(&["systemctl", "stop", "ctr1.scope"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
    assert_eq!(sb.record_files(), Vec::<String>::new());
    let left = sb.run(&["sh", "-c", "find /tmp -maxdepth 1 -user root -name 'race*'"]);
    assert_eq!(left.stdout, "", "hostchan's directories left");
}

/// Records are root's alone: modes do not follow the umask, and a record or directory anyone
/// else could have written is never acted on.
#[test]
fn planted_records_are_never_acted_on() {
    let sb = Sandbox::boot();
    sb.sh(&format!(
        "umask 000; {HOSTCHAN} create --unbound /run/u1:/x"
    ))
    .ok();
    let mode = |path: &str| fs::metadata(sb.path(path)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/var/lib/hostchan/channels"), 0o700);
    assert_eq!(mode("/var/lib/hostchan/channels/run-u1.json"), 0o600);
    assert_eq!(mode("/run/u1"), 0o1777, "the tmpfs root");
    sb.hostchan(&["delete", "/run/u1"]).ok();

    // A victim: a unit and a directory hostchan has nothing to do with.
    sb.start_scope("victim.scope");
    sb.sh("mkdir -p /run/victim").ok();
    let stat = fs::metadata(sb.path("/run/victim")).unwrap();
    let planted = format!(
        "version = 2\nid = \"0123\"\nhost_path = \"/run/victim\"\ncontainer_path = \"/x\"\nmode = \"rw\"\nsize = 4096\ncontainer = \"evil\"\nunit = \"victim.scope\"\ncleanup_unit = \"victim.scope\"\ncreated = 1\n\n[[made]]\npath = \"/run/victim\"\ndev = {}\nino = {}\n",
        stat.dev(),
        stat.ino()
    );
    fs::write(sb.path("/run/planted.toml"), &planted).unwrap();
    // The same as this hostchan writes records (JSON), and as older ones did (TOML).
    let planted_json = serde_json::json!({
        "version": 3, "id": "0123", "host_path": "/run/victim", "container_path": "/x",
        "mode": "rw", "size": 4096, "container": "evil", "unit": "victim.scope",
        "cleanup_unit": "victim.scope", "created": 1,
        "made": [{"path": "/run/victim", "dev": stat.dev(), "ino": stat.ino()}]
    });
    fs::write(sb.path("/run/planted.json"), planted_json.to_string()).unwrap();

    // A directory others can write: nothing in it is trusted, by any command.
    sb.sh("chmod 0777 /var/lib/hostchan/channels").ok();
    as_nobody(
        &sb,
        "cp /run/planted.toml /var/lib/hostchan/channels/evil.toml && cp /run/planted.json /var/lib/hostchan/channels/evil2.json",
    )
    .ok();
    let poststop = r#"{"id":"evil","status":"stopped","bundle":"/b"}"#;
    for out in [
        sb.hostchan(&["gc"]),
        sb.hostchan(&["delete", "--container", "evil"]),
        sb.hostchan(&["delete", "/run/victim"]),
        sb.hostchan(&["cleanup", "--id", "0123", "/run/victim"]),
        sb.sh(&format!("echo '{poststop}' | {HOSTCHAN} oci-hook")),
    ] {
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("must be root's alone"), "{out:#?}");
    }
    assert!(sb.path("/run/victim").is_dir());
    assert_eq!(sb.unit_state("victim.scope"), "active");

    // A root-owned directory again, but the record is someone else's: skipped, reported.
    sb.sh("chmod 0700 /var/lib/hostchan/channels").ok();
    let gc = sb.hostchan(&["gc"]).ok();
    assert!(gc.stderr.contains("must be root's alone"), "{gc:#?}");
    let out = sb.hostchan(&["delete", "--container", "evil"]).ok();
    assert!(out.stdout.contains("has no channels"), "{out:#?}");
    let out = sb.sh(&format!("echo '{poststop}' | {HOSTCHAN} oci-hook"));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(sb.path("/run/victim").is_dir());
    assert_eq!(sb.unit_state("victim.scope"), "active");
}

/// --pid attaches only inside a container: a process in the host's mount namespace (even in a
/// scope named like an engine's) or in a login session is refused before anything is made.
#[test]
fn pid_on_the_host_is_refused() {
    let sb = Sandbox::boot();
    let host = sb.start_scope("docker-0123.scope").to_string();
    let out = sb.hostchan(&["create", "--pid", &host, "/run/x:/etc"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("shares the host's mount namespace"),
        "{out:#?}"
    );
    let session = sb.start_scope("session-4.scope").to_string();
    for extra in [&["--unbound"][..], &["--scope", "docker-0123.scope"]] {
        let mut args = vec!["create", "--pid", &session];
        args.extend_from_slice(extra);
        args.push("/run/x:/etc");
        let out = sb.hostchan(&args);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("is a login session"), "{out:#?}");
    }
    assert!(!sb.path("/run/x").exists());
    assert_eq!(sb.mount_options("/etc"), None);
    assert!(sb.channel_units().is_empty());
}

/// Nothing propagates from a container's channel: a container with CAP_SYS_ADMIN that mounts
/// under its channel changes only its own view.
#[test]
fn mounts_in_a_containers_channel_stay_in_the_container() {
    let sb = Sandbox::boot();
    // As on a host booted by systemd: mounts are shared (the sandbox's systemd, which believes
    // it runs in a container, leaves them private).
    sb.run(&["mount", "--make-rshared", "/"]).ok();
    let dir = TempDir::new("propagation");
    let bundle = runc_bundle(&dir.0, "admin1", |config| {
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push("CAP_SYS_ADMIN".into());
        }
    });
    sb.runc_start(&bundle, "admin1").ok();
    let pid = sb.runc_pid("admin1");
    sb.hostchan(&["create", "--pid", &pid, "/run/chan/p:/chan:rw:1M"])
        .ok();
    sb.runc_exec(
        "admin1",
        "mkdir /chan/sub && mount -t tmpfs -o size=64k tmpfs /chan/sub && echo inner > /chan/sub/f",
    )
    .ok();
    assert!(sb.path("/run/chan/p/sub").is_dir());
    assert_eq!(
        sb.mount_options("/run/chan/p/sub"),
        None,
        "propagated to the host"
    );
    assert!(!sb.path("/run/chan/p/sub/f").exists());
    // The channel itself is still shared both ways.
    fs::write(sb.path("/run/chan/p/h"), "host").unwrap();
    assert_eq!(sb.runc_exec("admin1", "cat /chan/h").ok().stdout, "host");
    sb.runc(&["delete", "--force", "admin1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel to go");
}

/// JobRemoved is taken from systemd only: another client of the system bus that answers every
/// mount job with a forged "failed" cannot make a good create fail.
#[test]
fn forged_job_results_are_ignored() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    let socket = sb.path("/run/dbus/system_bus_socket");
    let address = format!("unix:path={}", socket.display());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let forger = {
        let (stop, forged) = (stop.clone(), forged.clone());
        let connection = zbus::blocking::connection::Builder::address(address.as_str())
            .unwrap()
            .build()
            .unwrap();
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.systemd1.Manager")
            .unwrap()
            .member("JobNew")
            .unwrap()
            .build();
        let jobs =
            zbus::blocking::MessageIterator::for_match_rule(rule, &connection, None).unwrap();
        // systemd only sends job signals once some client has subscribed.
        connection
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "Subscribe",
                &(),
            )
            .unwrap();
        std::thread::spawn(move || {
            for message in jobs {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(message) = message else { break };
                let Ok((id, job, unit)) =
                    message
                        .body()
                        .deserialize::<(u32, zbus::zvariant::OwnedObjectPath, String)>()
                else {
                    continue;
                };
                if unit.ends_with(".mount") {
                    let _ = connection.emit_signal(
                        None::<&str>,
                        "/org/freedesktop/systemd1",
                        "org.freedesktop.systemd1.Manager",
                        "JobRemoved",
                        &(id, job, unit, "failed"),
                    );
                    forged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    for n in 0..5 {
        let path = format!("/run/forged/c{n}");
        sb.hostchan(&[
            "create",
            "--scope",
            "ctr1.scope",
            &format!("{path}:/c:rw:1M"),
        ])
        .ok();
        assert!(sb.mount_options(&path).is_some());
    }
    // The forger answers from its own thread; on a loaded machine it may lag behind.
    sb.wait_for(
        || forged.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "the forger to answer every mount job (or the test proves nothing)",
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sb.run(&["systemctl", "stop", "ctr1.scope"]).ok();
    drop(forger);
}

/// A bus that goes away while hostchan waits for its job is an error, not a hang.
#[test]
fn a_bus_that_goes_away_ends_the_wait() {
    let sb = Sandbox::boot();
    sb.start_scope("ctr1.scope");
    // systemd's mount now takes 20 s (in this sandbox only).
    sb.sh("printf '#!/bin/sh\\nsleep 20\\n' > /run/slow-mount && chmod +x /run/slow-mount && mount --bind /run/slow-mount /usr/bin/mount")
        .ok();
    let started = std::time::Instant::now();
    let create = sb
        .command(&[
            HOSTCHAN,
            "create",
            "--scope",
            "ctr1.scope",
            "/run/slow/c:/c",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sb.wait_for(
        || !sb.units_matching("run-slow-c.mount").is_empty(),
        "the mount job to start",
    );
    sb.run(&["pkill", "-KILL", "dbus-daemon"]).ok();
    let out = create.wait_with_output().unwrap();
    let waited = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert!(
        waited < std::time::Duration::from_secs(10),
        "hostchan waited {waited:?} after the bus went away"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hostchan: D-Bus error talking to systemd"),
        "{stderr}"
    );
    assert!(!stderr.contains("match rule"), "{stderr}");
}

/// A path whose unit name systemd shortens with a hash, and a short path that escapes to that
/// very name: whichever comes first is the channel, the other is refused, and `status` and
/// `delete` of the other path never act on it.
#[test]
fn two_paths_never_share_a_unit() {
    let sb = Sandbox::boot();
    sb.start_scope("a.scope");
    // Under /tmp: a channel there has a cleanup unit, which this test stops on its own to
    // leave a record without units (under /run the prune a stop starts would take it).
    let long = format!("/tmp/hostchan/long/{}/{}", "a".repeat(150), "b".repeat(130));
    let unit = hostchan::mount_unit_name(std::path::Path::new(&long));
    assert!(unit.len() == 255 && unit.contains('_'), "{unit}");
    let short = format!("/{}", unit.trim_end_matches(".mount").replace('-', "/"));
    assert_eq!(
        hostchan::mount_unit_name(std::path::Path::new(&short)),
        unit,
        "the test's short path does not collide"
    );
    for (first, second) in [(&long, &short), (&short, &long)] {
        sb.hostchan(&["create", "--scope", "a.scope", &format!("{first}:/c:rw:1M")])
            .ok();
        let out = sb.hostchan(&[
            "create",
            "--scope",
            "a.scope",
            &format!("{second}:/c:rw:1M"),
        ]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(
            out.stderr.contains(&format!("is the channel at {first}")),
            "{out:#?}"
        );
        for verb in ["status", "delete"] {
            let out = sb.hostchan(&[verb, second]);
            assert_eq!(out.code, 1, "{verb}: {out:#?}");
            assert!(
                out.stderr.contains(&format!("no channel at {second}")),
                "{verb}: {out:#?}"
            );
        }
        assert!(sb.mount_options(first).is_some(), "the first channel went");
        assert!(!sb.path(second).exists(), "{second} was made");
        sb.hostchan(&["delete", first]).ok();
        sb.assert_no_trace(first);
    }
    // The long path's record outlives its units (its cleanup stopped alone, then the mount),
    // and root mounts the short path with systemd's own tool: the unit name is now that mount's,
    // and deleting the long path's channel leaves it alone.
    sb.hostchan(&["create", "--scope", "a.scope", &format!("{long}:/c:rw:1M")])
        .ok();
    let cleanup = sb.units_matching("hostchan-cleanup@*");
    assert_eq!(cleanup.len(), 1, "{cleanup:?}");
    sb.run(&["systemctl", "stop", &cleanup[0]]).ok();
    sb.run(&["systemctl", "stop", &unit]).ok();
    sb.wait_for(
        || sb.mount_options(&long).is_none(),
        "the long path's unmount",
    );
    assert_eq!(sb.record_files().len(), 1);
    sb.run(&[
        "busctl",
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        &unit,
        "fail",
        "3",
        "Where",
        "s",
        &short,
        "What",
        "s",
        "tmpfs",
        "Type",
        "s",
        "tmpfs",
        "0",
    ])
    .ok();
    sb.wait_for(
        || sb.mount_options(&short).is_some(),
        "root's mount of the short path",
    );
    assert_eq!(sb.property(&unit, "Where"), short);
    let out = sb.hostchan(&["delete", &long]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains(&format!("is now the mount of {short}")),
        "{out:#?}"
    );
    assert!(
        sb.mount_options(&short).is_some(),
        "root's own mount was stopped"
    );
    sb.run(&["systemctl", "stop", &unit]).ok();
}

/// A channel lands at its container path and nowhere else (issue 20, class 4): with a channel
/// at /data, a host user who plants `sub -> /etc` in it (mode 1777) cannot send a second
/// channel for /data/sub over the container's /etc; nested channels of one hook are attached
/// outer first, the inner one inside the outer.
#[test]
fn a_channel_lands_at_its_container_path_and_nowhere_else() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("nested");
    let bundle = runc_bundle(&dir.path("n1"), "n1", |_| {});
    sb.runc_start(&bundle, "n1").ok();
    let pid = sb.runc_pid("n1");
    sb.hostchan(&["create", "--pid", &pid, "/run/nest/outer:/data"])
        .ok();
    as_nobody(&sb, "ln -s /etc /run/nest/outer/sub").ok();
    let etc_before = sb.runc_exec("n1", "ls /etc").ok().stdout;
    let out = sb.hostchan(&["create", "--pid", &pid, "/run/nest/inner:/data/sub"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("/data/sub is a symlink in a directory that others than root can write"),
        "{out:#?}"
    );
    let mounts = sb.runc_exec("n1", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /etc tmpfs "), "{mounts}");
    assert_eq!(sb.runc_exec("n1", "ls /etc").ok().stdout, etc_before);
    assert!(sb.mount_options("/run/nest/inner").is_none());
    assert!(!sb.path("/run/nest/inner").exists());
    sb.runc(&["delete", "--force", "n1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");

    // One hook, the inner channel's key first: attached outer first, the inner inside it.
    let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook"] }]);
    let bundle = runc_bundle(&dir.path("n2"), "n2", |c| {
        c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
        c["annotations"] = serde_json::json!({
            "io.hostchan.channel.a": "/run/hostchan/n2/inner:/data/sub:rw:1M",
            "io.hostchan.channel.b": "/run/hostchan/n2/outer:/data:rw:1M",
        });
    });
    sb.runc_start(&bundle, "n2").ok();
    sb.runc_exec("n2", "echo in > /data/sub/x && echo out > /data/y")
        .ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/n2/inner/x")).unwrap(),
        "in\n"
    );
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/n2/outer/y")).unwrap(),
        "out\n"
    );
    sb.runc(&["delete", "--force", "n2"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
    sb.assert_no_trace("/run/hostchan/n2/inner");
}

/// `ro` means read-only, also to a container with its own user namespace (issue 20, class 5):
/// the kernel does not lock the read-only flag of a mount moved into such a container, whose
/// root could remount it writable, so hostchan refuses `ro` there with one line (CLI and hook)
/// and makes nothing; `rw` works, and `ro` still holds for a container without one.
#[test]
fn read_only_holds_or_is_refused_in_a_user_namespaced_container() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("userns-ro");
    let bundle = runc_bundle(&dir.path("u1"), "u1", |c| {
        common::with_user_namespace(c);
        let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook"] }]);
        c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
        c["annotations"] = serde_json::json!({
            "io.hostchan.channel": "/run/hostchan/u1/ro:/ro:ro:1M",
        });
    });
    let out = sb.runc_start(&bundle, "u1");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("has a user namespace of its own"),
        "{out:#?}"
    );
    let _ = sb.runc(&["delete", "--force", "u1"]);
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/hostchan/u1").exists());

    let bundle = runc_bundle(&dir.path("u2"), "u2", common::with_user_namespace);
    sb.runc_start(&bundle, "u2").ok();
    let pid = sb.runc_pid("u2");
    let out = sb.hostchan(&["create", "--pid", &pid, "/run/uro/ro:/ro:ro:1M"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("has a user namespace of its own"),
        "{out:#?}"
    );
    assert!(!sb.path("/run/uro/ro").exists());
    sb.hostchan(&["create", "--pid", &pid, "/run/uro/rw:/rw:rw:1M"])
        .ok();
    sb.runc_exec("u2", "echo in > /rw/x").ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/uro/rw/x")).unwrap(),
        "in\n"
    );
    sb.runc(&["delete", "--force", "u2"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
}

/// Round three, class 1: no container path reaches a kernel file system. By its text, /proc,
/// /sys and /dev (but /dev/shm itself) are refused with exit 2 and one line, by `create --pid`
/// and the hook alike; however it is reached (here a symlink in the image's root, which root
/// alone can have put there), a directory on procfs is refused too. Nothing is left.
#[test]
fn container_paths_never_reach_kernel_file_systems() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("kernelfs");
    let bundle = runc_bundle(&dir.path("k1"), "k1", |_| {});
    sb.runc_start(&bundle, "k1").ok();
    let pid = sb.runc_pid("k1");
    for (container_path, tree) in [
        ("/proc/sys/kernel", "/proc"),
        ("/proc/1/attr", "/proc"),
        ("/sys/fs/cgroup", "/sys"),
        ("/sys", "/sys"),
        ("/dev/mqueue", "/dev"),
        ("/dev/shm/sub", "/dev"),
    ] {
        let spec = format!("/run/kfs/a:{container_path}:rw:1M");
        let out = sb.hostchan(&["create", "--pid", &pid, &spec]);
        assert_eq!(out.code, 2, "{spec}: {out:#?}");
        assert!(
            out.stderr
                .contains(&format!("is in {tree}, which the kernel provides")),
            "{spec}: {out:#?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    }
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/kfs").exists());
    sb.runc(&["delete", "--force", "k1"]).ok();

    // A symlink in the image leads into procfs: refused once resolved, by fstatfs.
    let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook"] }]);
    let bundle = runc_bundle(&dir.path("k2"), "k2", |c| {
        c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
        c["annotations"] =
            serde_json::json!({ "io.hostchan.channel": "/run/hostchan/k2/a:/data:rw:1M" });
    });
    std::os::unix::fs::symlink("/proc/sys/kernel", dir.path("k2/rootfs/data")).unwrap();
    let out = sb.runc_start(&bundle, "k2");
    assert_ne!(out.code, 0, "{out:#?}");
    // runc shows the hook's line with its quotes escaped.
    assert!(
        out.stderr.contains("invalid container path")
            && out.stderr.contains("/proc")
            && out
                .stderr
                .contains(": lies on procfs in the container, a kernel file system"),
        "{out:#?}"
    );
    let _ = sb.runc(&["delete", "--force", "k2"]);
    assert!(sb.channel_units().is_empty());
    assert!(sb.record_files().is_empty());
    assert!(!sb.path("/run/hostchan/k2").exists());

    // /dev/shm itself is allowed: the channel replaces the runtime's shared memory.
    let bundle = runc_bundle(&dir.path("k3"), "k3", |c| {
        c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
        c["annotations"] =
            serde_json::json!({ "io.hostchan.channel": "/run/hostchan/k3/shm:/dev/shm:rw:2M" });
    });
    sb.runc_start(&bundle, "k3").ok();
    let df = sb.runc_exec("k3", "df -k /dev/shm").ok().stdout;
    assert!(df.contains(" 2048 "), "{df}");
    sb.runc_exec("k3", "echo shared > /dev/shm/x").ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/k3/shm/x")).unwrap(),
        "shared\n"
    );
    sb.runc(&["delete", "--force", "k3"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel to go");
    sb.assert_no_trace("/run/hostchan/k3/shm");
}

/// Round three, class 2: a directory someone else made in a channel (mode 1777) never holds an
/// inner channel, since they could rename or remove it and take the channel along; one hostchan
/// makes is root's, which nobody else can move in a sticky directory. And delete detaches the
/// mount it attached wherever it is now: a copy moved inside the container is found by its
/// mount id and unmounted there, and delete says so.
#[test]
fn a_mount_point_someone_else_made_never_holds_a_channel() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("planted");
    let bundle = runc_bundle(&dir.path("p1"), "p1", |_| {});
    sb.runc_start(&bundle, "p1").ok();
    let pid = sb.runc_pid("p1");
    sb.hostchan(&["create", "--pid", &pid, "/run/plant/outer:/data"])
        .ok();
    as_nobody(&sb, "mkdir /run/plant/outer/sub").ok();
    let out = sb.hostchan(&["create", "--pid", &pid, "/run/plant/inner:/data/sub"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains(
            "/data/sub was made by uid 65534 in a directory others can write, who could rename or remove it"
        ),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(sb.mount_options("/run/plant/inner").is_none());
    assert!(!sb.path("/run/plant/inner").exists());
    let mounts = sb.runc_exec("p1", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /data/sub "), "{mounts}");

    // Made by hostchan: root's, and the user cannot move it.
    sb.hostchan(&["create", "--pid", &pid, "/run/plant/fresh:/data/fresh"])
        .ok();
    let meta = fs::metadata(sb.path("/run/plant/outer/fresh")).unwrap();
    assert_eq!(meta.uid(), 0);
    let out = as_nobody(&sb, "mv /run/plant/outer/fresh /run/plant/outer/gone");
    assert_ne!(out.code, 0, "{out:#?}");

    // Root moves the copy inside the container; delete still finds and detaches it.
    sb.runc_exec("p1", "echo kept > /data/fresh/x").ok();
    sb.run(&["mkdir", &format!("/proc/{pid}/root/data/moved")])
        .ok();
    sb.run(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "--",
        "/bin/busybox",
        "mount",
        "-o",
        "move",
        "/data/fresh",
        "/data/moved",
    ])
    .ok();
    assert_eq!(
        sb.runc_exec("p1", "cat /data/moved/x").ok().stdout,
        "kept\n"
    );
    let out = sb.hostchan(&["delete", "/run/plant/fresh"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("had been moved from /data/fresh to /data/moved; detached it there"),
        "{out:#?}"
    );
    let mounts = sb.runc_exec("p1", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /data/moved "), "{mounts}");
    assert!(sb.runc_exec("p1", "test -e /data/moved/x").code != 0);

    // A copy gone from the container already: delete says so, and succeeds.
    sb.hostchan(&["create", "--pid", &pid, "/run/plant/gone:/data/gone"])
        .ok();
    sb.run(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "--",
        "/bin/busybox",
        "umount",
        "/data/gone",
    ])
    .ok();
    let out = sb.hostchan(&["delete", "/run/plant/gone"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("the channel's copy at /data/gone in the container of pid")
            && out.stderr.contains("had been unmounted already"),
        "{out:#?}"
    );
    assert!(sb.mount_options("/run/plant/gone").is_none());
    sb.runc(&["delete", "--force", "p1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
    sb.assert_no_trace("/run/plant/fresh");
    sb.assert_no_trace("/run/plant/gone");
}

/// Round three, class 3: the operator's lifetime switch holds for the configuration's default
/// as for an annotation. With `channels.lifetime = "delete"`, a plain hook (hooks.d, CDI) under
/// the default `hook.delete_lifetime = "engine"` refuses the container with one line and makes
/// nothing, no keeper either; a hook that says the engine deletes containers gets it.
#[test]
fn the_lifetime_switch_holds_for_the_configured_default() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("switch");
    fs::write(
        dir.path("config.toml"),
        "[channels]\nlifetime = \"delete\"\n",
    )
    .unwrap();
    let config = dir.path("config.toml").display().to_string();
    let bundle_with = |name: &str, extra: &[&str]| {
        let mut args = vec!["hostchan", "--config", &config, "oci-hook"];
        args.extend_from_slice(extra);
        let hook = serde_json::json!([{ "path": HOSTCHAN, "args": args }]);
        runc_bundle(&dir.path(name), name, |c| {
            c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
            c["annotations"] = serde_json::json!({
                "io.hostchan.channel": format!("/run/hostchan/{name}/a:/a:rw:1M"),
            });
        })
    };
    let out = sb.runc_start(&bundle_with("s1", &[]), "s1");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("invalid lifetime")
            && out.stderr.contains("is channels.lifetime in")
            && out.stderr.contains("hook.delete_lifetime"),
        "{out:#?}"
    );
    let _ = sb.runc(&["delete", "--force", "s1"]);
    assert!(sb.channel_units().is_empty());
    assert!(sb.units_matching("hostchan-keep@*").is_empty());
    assert!(sb.record_files().is_empty());
    assert!(!sb.path("/run/hostchan/s1").exists());

    sb.runc_start(&bundle_with("s2", &["--engine-deletes"]), "s2")
        .ok();
    let listed = sb.hostchan(&["--output", "json", "list"]).ok().json();
    assert_eq!(listed[0]["lifetime"], "delete", "{listed}");
    assert_eq!(sb.unit_state("hostchan-keep@s2.service"), "active");
    sb.runc(&["delete", "--force", "s2"]).ok();
    sb.hostchan(&["delete", "--container", "s2"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel to go");
    sb.assert_no_trace("/run/hostchan/s2/a");
}

/// Round three, class 4: hostile input never stalls a hook. A 100 MB annotation and 100,000
/// annotations are each refused within a second, with a message that quotes at most 200
/// characters of the value (on stderr, in JSON and in the journal), written at once.
#[test]
fn hostile_input_never_stalls_a_hook() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("hostile");
    // A real container's pid, so that nothing but the annotations can be refused.
    let bundle = runc_bundle(&dir.path("h1"), "h1", |_| {});
    sb.runc_start(&bundle, "h1").ok();
    let pid: i64 = sb.runc_pid("h1").parse().unwrap();
    let state = |annotations: serde_json::Value| {
        serde_json::json!({
            "ociVersion": "1.0.2", "id": "h1", "status": "creating", "pid": pid,
            "bundle": "/nonexistent", "annotations": annotations,
        })
        .to_string()
    };
    let huge = format!("/run/hostchan/h1/a:/a:rw:{}", "9".repeat(100 << 20));
    fs::write(
        dir.path("huge.json"),
        state(serde_json::json!({ "io.hostchan.channel": huge })),
    )
    .unwrap();
    let many: serde_json::Map<String, serde_json::Value> = (0..100_000)
        .map(|i| {
            (
                format!("io.hostchan.channel.c{i}"),
                format!("/run/hostchan/h1/c{i}:/c{i}:rw:1M").into(),
            )
        })
        .collect();
    fs::write(dir.path("many.json"), state(many.into())).unwrap();
    for (file, named) in [
        (
            "huge.json",
            "(104857625 bytes in all): is longer than any channel spec can be",
        ),
        (
            "many.json",
            "asks for more than hook.max_channels_per_container (16)",
        ),
    ] {
        for json in [false, true] {
            let script = format!(
                "exec {HOSTCHAN} {} oci-hook < {}",
                if json { "--output json" } else { "" },
                dir.path(file).display()
            );
            let started = std::time::Instant::now();
            let out = sb.sh(&script);
            let took = started.elapsed();
            assert_eq!(
                out.code,
                2,
                "{file}: {}",
                &out.stderr[..out.stderr.len().min(500)]
            );
            assert!(
                took < std::time::Duration::from_secs(1),
                "{file}: took {took:?}"
            );
            let message = if json {
                out.json()["error"].as_str().unwrap().to_owned()
            } else {
                out.stderr.clone()
            };
            assert!(message.contains(named), "{file}: {message}");
            assert!(message.len() < 600, "{file}: {} bytes", message.len());
            assert!(out.stderr.len() + out.stdout.len() < 600, "{out:#?}");
        }
    }
    sb.wait_for(
        || {
            sb.run(&["journalctl", "--no-pager", "-t", "hostchan", "-o", "cat"])
                .stdout
                .contains("bytes in all")
        },
        "the refusal in the journal",
    );
    let journal = sb
        .run(&["journalctl", "--no-pager", "-t", "hostchan", "-o", "cat"])
        .stdout;
    assert!(
        journal.lines().all(|line| line.len() < 600),
        "{}",
        journal.len()
    );
    assert!(sb.record_files().is_empty());
    sb.runc(&["delete", "--force", "h1"]).ok();
}

/// Round three, class 5: a create refused because the state directory is full leaves no lock
/// file, and gc removes a creator's lock file whose creator is gone.
#[test]
fn nothing_of_a_failed_create_stays() {
    let sb = Sandbox::boot();
    sb.sh("mount -t tmpfs -o size=64k,mode=0700 tmpfs /var/lib/hostchan && mkdir -m 0700 /var/lib/hostchan/channels")
        .ok();
    // Full to the last block.
    let _ = sb.sh("dd if=/dev/zero of=/var/lib/hostchan/fill bs=4k 2>/dev/null");
    let out = sb.hostchan(&["create", "--unbound", "/run/full/a:/a:rw:1M"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("No space left on device"), "{out:#?}");
    let left = sb
        .run(&["ls", "-A", "/var/lib/hostchan/channels"])
        .ok()
        .stdout;
    assert!(!left.contains(".creating-"), "{left}");
    assert!(!left.contains(".json"), "{left}");
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/full").exists());

    sb.run(&["rm", "/var/lib/hostchan/fill"]).ok();
    sb.sh("umask 077 && : > /var/lib/hostchan/channels/.creating-0123456789abcdef0123456789abcdef")
        .ok();
    sb.hostchan(&["gc"]).ok();
    let left = sb
        .run(&["ls", "-A", "/var/lib/hostchan/channels"])
        .ok()
        .stdout;
    assert!(!left.contains(".creating-"), "{left}");
    sb.run(&["umount", "/var/lib/hostchan"]).ok();
}

/// Round three, class 6: what needs nothing from the machine is checked first, so a bad spec is
/// named as such even when no owner is given (the README's "naming the field and the value").
#[test]
fn the_error_names_the_real_problem_first() {
    let sb = Sandbox::boot();
    for (spec, named) in [
        ("/tmp/x", "invalid spec \"/tmp/x\": has 1 field(s)"),
        (
            "a:b:rw:99Q",
            "invalid host path \"a\": must be an absolute path",
        ),
        ("/run/x:/x:rw:99Q", "invalid size \"99Q\""),
        ("/run/x:/proc/x", "invalid container path \"/proc/x\""),
    ] {
        let out = sb.hostchan(&["create", spec]);
        assert_eq!(out.code, 2, "{spec}: {out:#?}");
        assert!(out.stderr.contains(named), "{spec}: {out:#?}");
        let out = sb.hostchan(&["--output", "json", "create", "--container", "c1", spec]);
        assert_eq!(out.code, 2, "{spec}: {out:#?}");
        assert!(
            out.json()["error"].as_str().unwrap().contains(named),
            "{spec}: {out:#?}"
        );
    }
    // With a good spec, the missing owner is what is said.
    let out = sb.hostchan(&["create", "/run/x:/x:rw:1M"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(!out.stderr.contains("invalid spec"), "{out:#?}");
    assert!(!sb.path("/run/x").exists());
}
