//! The one teardown with each of its steps failing on purpose (error fail points, compiled into
//! test builds only), on the sandboxed systemd with a real runc container whose memory limit a
//! channel raised: a failed create's rollback goes on past every failure and says what it could
//! not take back; a delete stops at a failure up to the unmount (the channel stays whole and a
//! second delete finishes it) and goes on past one after it.

mod common;

use common::{runc_bundle, Run, Sandbox, TempDir, HOSTCHAN};

const LIMIT: u64 = 16 << 20;
const SIZE: u64 = 8 << 20;

/// A runc container with a memory limit, running in `runc-<name>.scope`; its init's pid.
fn container(sb: &Sandbox, dir: &TempDir, name: &str) -> String {
    let bundle = runc_bundle(&dir.0, name, |c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({ "limit": LIMIT });
    });
    sb.runc_start(&bundle, name).ok();
    sb.runc_pid(name)
}

/// `create --grow-memory-limit --pid` of an 8 MiB channel at /chan, with `fail` as
/// HOSTCHAN_FAIL_AT.
fn create(sb: &Sandbox, fail: &str, pid: &str, host_path: &str) -> Run {
    sb.run(&[
        "env",
        &format!("HOSTCHAN_FAIL_AT={fail}"),
        HOSTCHAN,
        "create",
        "--grow-memory-limit",
        "--pid",
        pid,
        &format!("{host_path}:/chan:rw:{SIZE}"),
    ])
}

fn delete(sb: &Sandbox, fail: &str, host_path: &str) -> Run {
    sb.run(&[
        "env",
        &format!("HOSTCHAN_FAIL_AT={fail}"),
        HOSTCHAN,
        "delete",
        host_path,
    ])
}

/// The scope's memory limit and the property that holds it: `MemoryMax` on cgroup v2,
/// `MemoryLimit` on v1.
fn memory_limit(sb: &Sandbox, name: &str) -> (u64, &'static str) {
    let scope = format!("runc-{name}.scope");
    for property in ["MemoryMax", "MemoryLimit"] {
        if let Ok(bytes) = sb.property(&scope, property).parse() {
            return (bytes, property);
        }
    }
    panic!("{scope} has no memory limit");
}

fn memory_max(sb: &Sandbox, name: &str) -> u64 {
    memory_limit(sb, name).0
}

fn container_has_channel(sb: &Sandbox, name: &str) -> bool {
    let mounts = sb.runc_exec(name, "cat /proc/mounts").ok().stdout;
    mounts.lines().any(|line| line.contains(" /chan tmpfs "))
}

#[track_caller]
fn assert_failed_with(out: &Run, needles: &[&str]) {
    assert_eq!(out.code, 1, "{out:#?}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "no {needle:?} in: {out:#?}");
    }
}

#[test]
fn a_rollback_goes_on_past_a_failure_at_each_step() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("teardown-rollback");
    let pid = container(&sb, &dir, "rb1");

    // The control: the rollback itself fails nowhere, and takes everything back.
    let out = create(&sb, "create-done:error", &pid, "/run/rb/c0");
    assert_failed_with(&out, &["fail point create-done"]);
    assert!(!out.stderr.contains("taking it back failed"), "{out:#?}");
    sb.assert_no_trace("/run/rb/c0");
    assert!(!container_has_channel(&sb, "rb1"));
    assert_eq!(memory_max(&sb, "rb1"), LIMIT);

    // The container's copy cannot be detached: the host side goes all the same.
    let out = create(
        &sb,
        "create-done:error,teardown-detach:error",
        &pid,
        "/run/rb/c1",
    );
    assert_failed_with(
        &out,
        &[
            "fail point create-done",
            "taking it back failed: fail point teardown-detach",
        ],
    );
    sb.assert_no_trace("/run/rb/c1");
    assert_eq!(memory_max(&sb, "rb1"), LIMIT);
    assert!(container_has_channel(&sb, "rb1"), "the copy was detached");
    sb.run(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "/bin/busybox",
        "umount",
        "/chan",
    ])
    .ok();

    // The units cannot be stopped: the mount stays with its record (and the raised limit, since
    // the tmpfs may hold the container's pages), for a delete to take later.
    let out = create(
        &sb,
        "create-done:error,teardown-stop:error",
        &pid,
        "/run/rb/c2",
    );
    assert_failed_with(
        &out,
        &["fail point create-done", "fail point teardown-stop"],
    );
    assert!(sb.mount_options("/run/rb/c2").is_some());
    assert_eq!(sb.record_files().len(), 1, "the record went");
    assert_eq!(memory_max(&sb, "rb1"), LIMIT + SIZE);
    assert!(!container_has_channel(&sb, "rb1"));
    sb.hostchan(&["delete", "/run/rb/c2"]).ok();
    sb.assert_no_trace("/run/rb/c2");
    assert_eq!(memory_max(&sb, "rb1"), LIMIT);

    // The leftovers cannot be looked for: PID 1 removed the directory anyway (the mount's
    // RuntimeDirectory=), the record is gc's, and the limit goes back, since the mount's stop
    // succeeded.
    let out = create(
        &sb,
        "create-done:error,teardown-remove:error",
        &pid,
        "/run/rb/c3",
    );
    assert_failed_with(&out, &["fail point teardown-remove"]);
    assert!(!sb.path("/run/rb/c3").exists());
    sb.hostchan(&["gc"]).ok();
    sb.assert_no_trace("/run/rb/c3");
    assert_eq!(memory_max(&sb, "rb1"), LIMIT);

    // The limit cannot be lowered: everything else goes, and the error says so.
    let out = create(
        &sb,
        "create-done:error,teardown-memory:error",
        &pid,
        "/run/rb/c4",
    );
    assert_failed_with(&out, &["fail point teardown-memory"]);
    sb.assert_no_trace("/run/rb/c4");
    assert_eq!(memory_max(&sb, "rb1"), LIMIT + SIZE);

    sb.runc(&["delete", "--force", "rb1"]).ok();
}

#[test]
fn a_delete_stops_before_the_unmount_and_goes_on_after_it() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("teardown-delete");
    let pid = container(&sb, &dir, "dl1");
    for (n, step) in [
        "teardown-detach",
        "teardown-stop",
        "teardown-remove",
        "teardown-memory",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/run/dl/c{n}");
        create(&sb, "", &pid, &path).ok();
        assert_eq!(memory_max(&sb, "dl1"), LIMIT + SIZE, "{step}");
        let out = delete(&sb, &format!("{step}:error"), &path);
        assert_failed_with(&out, &[&format!("fail point {step}")]);
        match *step {
            // Up to the unmount: the channel is whole, and a second delete finishes it.
            "teardown-detach" | "teardown-stop" => {
                assert!(sb.mount_options(&path).is_some(), "{step}");
                assert_eq!(sb.record_files().len(), 1, "{step}");
                assert_eq!(memory_max(&sb, "dl1"), LIMIT + SIZE, "{step}");
                assert_eq!(
                    container_has_channel(&sb, "dl1"),
                    *step == "teardown-detach",
                    "{step}"
                );
                sb.hostchan(&["delete", &path]).ok();
                assert_eq!(memory_max(&sb, "dl1"), LIMIT, "{step}");
            }
            // Past it: everything else is done.
            "teardown-remove" => assert_eq!(memory_max(&sb, "dl1"), LIMIT),
            _ => {
                assert_eq!(memory_max(&sb, "dl1"), LIMIT + SIZE);
                let property = memory_limit(&sb, "dl1").1;
                sb.run(&[
                    "systemctl",
                    "set-property",
                    "--runtime",
                    "runc-dl1.scope",
                    &format!("{property}={LIMIT}"),
                ])
                .ok();
            }
        }
        sb.assert_no_trace(&path);
        assert!(!container_has_channel(&sb, "dl1"), "{step}");
    }
    sb.runc(&["delete", "--force", "dl1"]).ok();
}

/// A PID 1 that stops answering (issue 20, class 8): the create fails with a clear line, takes
/// back what it can, and leaves the record for the units' stop that systemd still has queued;
/// once systemd answers again the channel goes (its cleanup unit removes directory and
/// record), and gc finds nothing.
#[test]
fn a_systemd_that_does_not_answer_is_a_clear_error_and_leaves_nothing() {
    let sb = Sandbox::boot();
    sb.start_scope("to.scope");
    let create = sb
        .command(&[
            "env",
            "HOSTCHAN_DBUS_TIMEOUT_MS=1000",
            "HOSTCHAN_PAUSE_AT=after-dirs:1500",
            HOSTCHAN,
            "create",
            "--scope",
            "to.scope",
            "/run/to/c:/c:rw:1M",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Frozen once the record and the directory are made, before the units are asked for.
    sb.wait_for(|| sb.path("/run/to/c").exists(), "the directory to be made");
    sb.freeze();
    let out = create.wait_with_output();
    sb.thaw();
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("systemd did not answer within 1 s")
            && last.contains("left /run/to/c and its record for hostchan gc"),
        "{stderr}"
    );
    // systemd takes the start and then the stop in, in order: the channel comes and goes.
    sb.wait_for_no_jobs();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.hostchan(&["gc"]).ok();
    sb.assert_no_trace("/run/to/c");
    assert!(!sb.path("/run/to").exists());
}
