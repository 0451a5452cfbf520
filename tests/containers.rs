//! Channels inside real containers: runc and podman in the sandboxed systemd.

mod common;

use std::fs;
use std::path::Path;

use common::{runc_bundle, Sandbox, TempDir, HOSTCHAN};

#[test]
fn runc_create_pid_shares_files_both_ways_and_goes_with_the_container() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-pid");
    let bundle = runc_bundle(&dir.0, "ctr1", |_| {});
    sb.runc_start(&bundle, "ctr1").ok();
    let pid = sb.runc_pid("ctr1");

    let rw = sb
        .hostchan(&[
            "create",
            "--output",
            "json",
            "--pid",
            &pid,
            "--container",
            "ctr1",
            "/run/chan/rw:/chan:rw:1M",
        ])
        .ok()
        .json();
    assert_eq!(rw["owner"], "runc-ctr1.scope");
    sb.hostchan(&["create", "--pid", &pid, "/run/chan/ro:/deep/ro:ro:1M"])
        .ok();

    // Both directions.
    sb.runc_exec("ctr1", "echo from-container > /chan/c").ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/chan/rw/c")).unwrap(),
        "from-container\n"
    );
    fs::write(sb.path("/run/chan/rw/h"), "from-host").unwrap();
    assert_eq!(sb.runc_exec("ctr1", "cat /chan/h").ok().stdout, "from-host");
    fs::write(sb.path("/run/chan/ro/h"), "read-only for you").unwrap();
    assert_eq!(
        sb.runc_exec("ctr1", "cat /deep/ro/h").ok().stdout,
        "read-only for you"
    );

    // ro is read-only inside, and the host side stays writable.
    let out = sb.runc_exec("ctr1", "echo x > /deep/ro/x");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
    let mounts = sb.runc_exec("ctr1", "cat /proc/mounts").ok().stdout;
    let line = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("{target} not mounted in the container:\n{mounts}"))
            .to_owned()
    };
    assert!(
        line("/chan").contains("tmpfs rw,nosuid,nodev,noexec"),
        "{mounts}"
    );
    assert!(line("/chan").contains("size=1024k"), "{mounts}");
    assert!(
        line("/deep/ro").contains("tmpfs ro,nosuid,nodev,noexec"),
        "{mounts}"
    );

    // size= holds inside.
    let out = sb.runc_exec("ctr1", "dd if=/dev/zero of=/chan/big bs=64k count=32");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("No space left on device"), "{out:#?}");

    // SIGKILL of the container's init: the scope stops, and systemd takes the channels away.
    sb.runc(&["kill", "ctr1", "KILL"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.wait_for(
        || !sb.path("/run/chan").exists(),
        "the channel directories to go",
    );
    sb.assert_no_trace("/run/chan/rw");
    sb.assert_no_trace("/run/chan/ro");
    sb.runc(&["delete", "ctr1"]).ok();
}

#[test]
fn runc_delete_removes_the_channel() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-delete");
    let bundle = runc_bundle(&dir.0, "ctr2", |_| {});
    sb.runc_start(&bundle, "ctr2").ok();
    let pid = sb.runc_pid("ctr2");
    sb.hostchan(&["create", "--pid", &pid, "/run/c2:/chan"])
        .ok();
    sb.hostchan(&["create", "--pid", &pid, "/run/c3:/chan3"])
        .ok();
    // delete takes the container's copy too: nothing the container writes lands anywhere.
    sb.hostchan(&["delete", "/run/c3"]).ok();
    let mounts = sb.runc_exec("ctr2", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /chan3 "), "{mounts}");
    assert!(
        mounts.contains(" /chan "),
        "the other channel went too: {mounts}"
    );
    sb.runc(&["delete", "--force", "ctr2"]).ok();
    sb.wait_for(
        || !sb.path("/run/c2").exists(),
        "the channel directory to go",
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/c2");
}

fn with_hooks(config: &mut serde_json::Value, annotations: &[(&str, &str)]) {
    let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook"] }]);
    config["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    config["annotations"] = map.into();
}

/// The hook starts all of a container's channels together; when one cannot be attached in the
/// container (its path lies under a file there), the ones already up and attached are taken
/// down again, inside the container too: all or nothing.
#[test]
fn a_hook_that_fails_after_the_units_started_leaves_nothing() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-hook-undo");
    let bundle = runc_bundle(&dir.0, "hu1", |c| {
        with_hooks(
            c,
            &[
                ("io.hostchan.channel.a", "/run/hostchan/hu1/a:/a:rw:1M"),
                ("io.hostchan.channel.b", "/run/hostchan/hu1/b:/b:rw:1M"),
                (
                    "io.hostchan.channel.c",
                    "/run/hostchan/hu1/c:/bin/busybox/c:rw:1M",
                ),
            ],
        )
    });
    let out = sb.runc_start(&bundle, "hu1");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("annotation io.hostchan.channel.c: cannot attach channel"),
        "{out:#?}"
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    for path in [
        "/run/hostchan/hu1/a",
        "/run/hostchan/hu1/b",
        "/run/hostchan/hu1/c",
    ] {
        sb.assert_no_trace(path);
    }
    assert!(!sb.path("/run/hostchan/hu1").exists());
    assert_eq!(sb.record_files(), Vec::<String>::new());
    sb.runc(&["delete", "--force", "hu1"]);
}

#[test]
fn runc_with_the_hook_gets_its_channels_without_calling_hostchan() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-hook");
    let bundle = runc_bundle(&dir.0, "hk1", |c| {
        with_hooks(
            c,
            &[
                ("io.hostchan.channel", "/run/hostchan/hk1/a:/a:rw:1M"),
                (
                    "io.hostchan.channel.logs",
                    "/run/hostchan/hk1/b:/var/b:ro:2M",
                ),
            ],
        )
    });
    sb.runc_start(&bundle, "hk1").ok();
    let list = sb.hostchan(&["list", "--output", "json"]).ok().json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for channel in list {
        assert_eq!(channel["container"], "hk1");
        assert_eq!(channel["owner"], "runc-hk1.scope");
    }
    sb.runc_exec("hk1", "echo in > /a/x").ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/hk1/a/x")).unwrap(),
        "in\n"
    );
    fs::write(sb.path("/run/hostchan/hk1/b/y"), "out").unwrap();
    assert_eq!(sb.runc_exec("hk1", "cat /var/b/y").ok().stdout, "out");
    let out = sb.runc_exec("hk1", "touch /var/b/z");
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
    let out = sb.runc_exec("hk1", "dd if=/dev/zero of=/a/big bs=64k count=32");
    assert!(out.stderr.contains("No space left on device"), "{out:#?}");
    // Mounted inside the container's root, not at the runtime's /a.
    assert!(!sb.path("/a").exists() && !sb.path("/var/b").exists());

    sb.runc(&["kill", "hk1", "KILL"]).ok();
    sb.wait_for(
        || sb.runc(&["state", "hk1"]).stdout.contains("stopped"),
        "hk1 to stop",
    );
    sb.runc(&["delete", "hk1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/hostchan/hk1/a");
    sb.assert_no_trace("/run/hostchan/hk1/b");
    assert!(!sb.path("/run/hostchan/hk1").exists());
}

/// `io.hostchan.shm-size` through the hook: the container's /dev/shm is a channel of that size
/// (over the runtime's 64 MiB one), for engines without a --shm-size of their own.
#[test]
fn the_hook_gives_a_dev_shm_of_the_size_asked() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-shm");
    let bundle = runc_bundle(&dir.0, "shm1", |c| {
        with_hooks(c, &[("io.hostchan.shm-size", "8M")])
    });
    sb.runc_start(&bundle, "shm1").ok();
    let host_path = "/run/hostchan/shm1/shm";
    let options = sb.mount_options(host_path).expect("mounted on the host");
    assert!(options.contains("size=8192k"), "{options}");
    let out = sb
        .runc_exec(
            "shm1",
            "grep ' /dev/shm ' /proc/self/mountinfo | tail -1; df -k /dev/shm | tail -1",
        )
        .ok()
        .stdout;
    let (top, df) = out.split_once('\n').expect("two lines");
    assert!(
        top.contains(" - tmpfs ") && top.contains("size=8192k"),
        "{out}"
    );
    assert_eq!(df.split_whitespace().nth(1), Some("8192"), "{out}");
    sb.runc_exec("shm1", "echo seg > /dev/shm/s").ok();
    assert_eq!(
        fs::read_to_string(sb.path(&format!("{host_path}/s"))).unwrap(),
        "seg\n"
    );
    let out = sb.runc_exec("shm1", "dd if=/dev/zero of=/dev/shm/big bs=1M count=16");
    assert!(out.stderr.contains("No space left on device"), "{out:#?}");

    sb.runc(&["kill", "shm1", "KILL"]).ok();
    sb.wait_for(
        || sb.runc(&["state", "shm1"]).stdout.contains("stopped"),
        "shm1 to stop",
    );
    sb.runc(&["delete", "shm1"]).ok();
    sb.assert_no_trace(host_path);
}

#[test]
fn a_bad_annotation_fails_the_container_and_leaves_nothing() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-hook-bad");
    let bundle = runc_bundle(&dir.0, "bad1", |c| {
        with_hooks(
            c,
            &[
                ("io.hostchan.channel.a", "/run/hostchan/bad1/a:/a:rw:1M"),
                ("io.hostchan.channel.b", "/run/hostchan/bad1/b:/b:rw:lots"),
            ],
        )
    });
    let out = sb.runc_start(&bundle, "bad1");
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("invalid size \\\"lots\\\"")
            || out.stderr.contains("invalid size \"lots\""),
        "{out:#?}"
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/hostchan/bad1/a");
    assert!(!sb.path("/run/hostchan/bad1").exists());
    let _ = sb.runc(&["delete", "--force", "bad1"]);

    // Annotations get the CLI's rules: what systemd would rewrite, and paths outside the hook's
    // roots (/run/hostchan by default), are refused.
    for (name, spec, expected) in [
        ("bad2", "/run/hostchan/a$$b:/a", "contains '$'"),
        (
            "bad4",
            "/run/hostchan/sys${X}temd:/a",
            "unknown template {X}",
        ),
        (
            "bad3",
            "/run/elsewhere/a:/a",
            "is outside the subtree of container bad3",
        ),
    ] {
        let bundle = runc_bundle(&dir.path(name), name, |c| {
            with_hooks(c, &[("io.hostchan.channel", spec)])
        });
        let out = sb.runc_start(&bundle, name);
        assert_ne!(out.code, 0, "{out:#?}");
        assert!(out.stderr.contains(expected), "{out:#?}");
        let _ = sb.runc(&["delete", "--force", name]);
        assert!(sb.channel_units().is_empty());
        assert!(!sb.path("/run/elsewhere").exists());
    }
}

#[test]
fn symlinks_in_the_rootfs_never_reach_the_host() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-symlink");
    let bundle = runc_bundle(&dir.0, "sym1", |c| {
        with_hooks(
            c,
            &[(
                "io.hostchan.channel",
                "/run/hostchan/sym1/hook:/hook-escape/x:rw:1M",
            )],
        )
    });
    let rootfs = dir.path("rootfs");
    // Host directories with markers; the rootfs has directories of the same names, reached
    // through symlinks that would lead to the host's if followed outside the container's root.
    for host_dir in ["/run/hostdir", "/run/inner"] {
        fs::create_dir_all(sb.path(host_dir)).unwrap();
        fs::write(sb.path(&format!("{host_dir}/marker")), "host").unwrap();
        fs::create_dir_all(rootfs.join(&host_dir[1..])).unwrap();
    }
    std::os::unix::fs::symlink("/run/hostdir", rootfs.join("chan")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../run/inner",
        rootfs.join("hook-escape"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/run/nowhere", rootfs.join("dangling")).unwrap();

    // The hook runs before pivot_root, where the container's root is only a directory.
    sb.runc_start(&bundle, "sym1").ok();
    let pid = sb.runc_pid("sym1");
    sb.hostchan(&["create", "--pid", &pid, "/run/sym/pid:/chan/x"])
        .ok();
    let out = sb.hostchan(&["create", "--pid", &pid, "/run/sym/dangling:/dangling/x"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("/dangling is a symlink whose target does not exist inside the container"),
        "{out:#?}"
    );

    // Both channels are inside the container, made below its root...
    sb.runc_exec("sym1", "echo 1 > /chan/x/f && echo 2 > /hook-escape/x/f")
        .ok();
    assert_eq!(
        fs::read_to_string(sb.path("/run/sym/pid/f")).unwrap(),
        "1\n"
    );
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/sym1/hook/f")).unwrap(),
        "2\n"
    );
    assert!(rootfs.join("run/hostdir/x").is_dir());
    assert!(rootfs.join("run/inner/x").is_dir());
    // ...and nothing on the host was touched.
    for host_dir in ["/run/hostdir", "/run/inner"] {
        let entries: Vec<_> = fs::read_dir(sb.path(host_dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries,
            vec![std::ffi::OsString::from("marker")],
            "{host_dir}"
        );
        assert!(sb.mount_options(host_dir).is_none());
    }
    assert!(!sb.path("/run/nowhere").exists() && !rootfs.join("run/nowhere").exists());
    assert!(!sb.path("/run/sym/dangling").exists());
    sb.runc(&["delete", "--force", "sym1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
}

#[test]
fn grow_memory_limit_lets_the_container_fill_its_channel() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-memory");
    let limit = 16u64 << 20;
    let bundle = runc_bundle(&dir.0, "mem1", |c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({ "limit": limit });
    });
    sb.runc_start(&bundle, "mem1").ok();
    let pid = sb.runc_pid("mem1");

    // Without the flag: a warning, and filling the channel gets the writer OOM-killed.
    let out = sb
        .hostchan(&["create", "--pid", &pid, "/run/m/small:/small:rw:32M"])
        .ok();
    assert!(out.stderr.contains("can be OOM-killed"), "{out:#?}");
    let out = sb.runc_exec("mem1", "dd if=/dev/zero of=/small/f bs=1M count=24");
    assert_eq!(out.code, 137, "expected an OOM kill: {out:#?}");
    fs::remove_file(sb.path("/run/m/small/f")).unwrap();

    let out = sb
        .hostchan(&[
            "create",
            "--output",
            "json",
            "--grow-memory-limit",
            "--pid",
            &pid,
            "/run/m/big:/big:rw:32M",
        ])
        .ok()
        .json();
    let change = &out["memory_limit"];
    assert_eq!(change["unit"], "runc-mem1.scope");
    assert_eq!(change["from"], limit);
    assert_eq!(change["to"], limit + (32 << 20));
    let property = change["property"].as_str().unwrap();
    assert_eq!(
        sb.property("runc-mem1.scope", property),
        (limit + (32 << 20)).to_string()
    );
    sb.runc_exec("mem1", "dd if=/dev/zero of=/big/f bs=1M count=24")
        .ok();
    assert_eq!(
        fs::metadata(sb.path("/run/m/big/f")).unwrap().len(),
        24 << 20
    );
    // Deleted while the container runs: the limit goes down by exactly what was added, and
    // the container's copy of the channel goes too.
    sb.hostchan(&["delete", "/run/m/big"]).ok();
    assert_eq!(sb.property("runc-mem1.scope", property), limit.to_string());
    let mounts = sb.runc_exec("mem1", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /big "), "{mounts}");
    sb.runc(&["delete", "--force", "mem1"]).ok();
}

#[test]
fn create_pid_refuses_what_it_cannot_do_and_leaves_nothing() {
    let sb = Sandbox::boot();
    // PID 1, a login session and a scope no engine made are never a container's owner.
    let out = sb.hostchan(&["create", "--pid", "1", "/run/np:/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("pid 1 is in init.scope, which is PID 1's own scope"),
        "{out:#?}"
    );
    let session = sb.start_scope("session-7.scope").to_string();
    let out = sb.hostchan(&["create", "--pid", &session, "/run/np:/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("is in session-7.scope, which is a login session"),
        "{out:#?}"
    );
    let out = sb.hostchan(&["create", "--scope", "session-7.scope", "/run/np:/chan"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("is a login session"), "{out:#?}");
    let other = sb.start_scope("run-r1.scope").to_string();
    let out = sb.hostchan(&["create", "--pid", &other, "/run/np:/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("name it with --scope"), "{out:#?}");
    // A unit named explicitly is looked up where it runs: under user.slice it is a user's.
    sb.sh("systemd-run --quiet --scope --slice=user.slice --unit=named-u.scope sleep infinity </dev/null >/dev/null 2>&1 &")
        .ok();
    sb.wait_for(
        || sb.unit_state("named-u.scope") == "active",
        "named-u.scope to become active",
    );
    let out = sb.hostchan(&["create", "--scope", "named-u.scope", "/run/np:/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("runs under user.slice"), "{out:#?}");
    // Named explicitly, the same scope is the owner.
    sb.hostchan(&["create", "--scope", "run-r1.scope", "/run/np/named:/chan"])
        .ok();
    sb.hostchan(&["delete", "/run/np/named"]).ok();
    let out = sb.hostchan(&["create", "--pid", "999999", "--unbound", "/run/np:/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("pid 999999 does not exist"), "{out:#?}");
    // Attaching fails after the host side is up (the container path is a file): rolled back.
    let dir = TempDir::new("runc-rollback");
    let bundle = runc_bundle(&dir.0, "rb1", |_| {});
    fs::write(dir.path("rootfs/file"), "").unwrap();
    sb.runc_start(&bundle, "rb1").ok();
    let pid = sb.runc_pid("rb1");
    let out = sb.hostchan(&["create", "--pid", &pid, "/run/np/x:/file/chan"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("cannot attach channel /run/np/x at /file/chan"),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace("/run/np/x");
    assert!(!sb.path("/run/np").exists());
    assert!(Path::new(&dir.path("rootfs/file")).is_file());
    sb.runc(&["delete", "--force", "rb1"]).ok();
}

#[test]
fn podman_with_the_shipped_hook_file() {
    podman_with_the_shipped_hook_file_on("runc");
}

#[test]
fn podman_on_crun_with_the_shipped_hook_file() {
    podman_with_the_shipped_hook_file_on("crun");
}

fn podman_with_the_shipped_hook_file_on(runtime: &str) {
    let sb = Sandbox::boot();
    let dir = TempDir::new(&format!("podman-{runtime}"));
    let rootfs = common::busybox_rootfs(&dir.0);
    // The shipped hooks.d file, pointed at the binary under test.
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/oci-hooks.d/hostchan.json"),
    )
    .unwrap();
    assert!(shipped.contains("\"/usr/bin/hostchan\""));
    fs::create_dir_all(dir.path("hooks")).unwrap();
    fs::write(
        dir.path("hooks/hostchan.json"),
        shipped.replace("/usr/bin/hostchan", HOSTCHAN),
    )
    .unwrap();
    let storage = dir.path("storage").display().to_string();
    let hooks = dir.path("hooks").display().to_string();
    let rootfs = rootfs.display().to_string();
    let podman = common::Podman {
        sandbox: &sb,
        storage,
        hooks,
        runtime: Some(runtime),
    };
    let podman = |args: &[&str]| podman.run(args);

    let id = podman(&[
        "run",
        "-d",
        "--name",
        "pc",
        "--network",
        "none",
        "--annotation",
        "io.hostchan.channel=/run/hostchan/{id}/a:/a:rw:1M",
        "--annotation",
        "io.hostchan.channel.two=/run/hostchan/{id}/b:/b:ro:1M",
        "--rootfs",
        &rootfs,
        "sleep",
        "1000",
    ])
    .ok()
    .stdout
    .trim()
    .to_owned();
    let list = sb.hostchan(&["list", "--output", "json"]).ok().json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for channel in list {
        assert_eq!(channel["owner"], format!("libpod-{id}.scope"));
        assert_eq!(channel["container"], id);
    }
    podman(&["exec", "pc", "sh", "-c", "echo from-podman > /a/x"]).ok();
    assert_eq!(
        fs::read_to_string(sb.path(&format!("/run/hostchan/{id}/a/x"))).unwrap(),
        "from-podman\n"
    );
    fs::write(sb.path(&format!("/run/hostchan/{id}/b/y")), "from-host").unwrap();
    assert_eq!(
        podman(&["exec", "pc", "cat", "/b/y"]).ok().stdout,
        "from-host"
    );
    let out = podman(&["exec", "pc", "touch", "/b/z"]);
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");

    podman(&["rm", "-f", "-t", "0", "pc"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.assert_no_trace(&format!("/run/hostchan/{id}/a"));
    sb.assert_no_trace(&format!("/run/hostchan/{id}/b"));
    assert!(!sb.path(&format!("/run/hostchan/{id}")).exists());

    // The shipped file runs the hook for a /dev/shm size alone too: podman's own --shm-size
    // has no host path to share and no place in systemd.
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--annotation",
        "io.hostchan.shm-size=8M",
        "--rootfs",
        &rootfs,
        "sh",
        "-c",
        "df -k /dev/shm | tail -1",
    ])
    .ok()
    .stdout;
    assert_eq!(out.split_whitespace().nth(1), Some("8192"), "{out}");
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    sb.wait_for(
        || sb.record_files().is_empty(),
        "the /dev/shm channel's record to go",
    );

    // A bad spec: podman run fails with hostchan's message, and nothing is left.
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--annotation",
        "io.hostchan.channel.ok=/run/hostchan/{id}/ok:/ok:rw:1M",
        "--annotation",
        "io.hostchan.channel.zbad=/run/hostchan/{id}/x:/x:rw:lots",
        "--rootfs",
        &rootfs,
        "true",
    ]);
    assert_ne!(out.code, 0, "{out:#?}");
    // runc passes the hook's stderr on; crun 1.8 only its exit code (2: a bad spec), and the
    // message is in the journal.
    let message = "annotation io.hostchan.channel.zbad: invalid size \"lots\"";
    let expected = match runtime {
        "crun" => "exit code: 2".to_owned(),
        _ => format!("hostchan: {message}"),
    };
    assert!(out.stderr.contains(&expected), "{out:#?}");
    sb.wait_for(
        || {
            sb.run(&[
                "journalctl",
                "--no-pager",
                "-o",
                "cat",
                "SYSLOG_IDENTIFIER=hostchan",
            ])
            .stdout
            .contains(message)
        },
        "the hook's error in the journal",
    );
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
    assert_eq!(sb.record_files(), Vec::<String>::new());
    let left = fs::read_dir(sb.path("/run/hostchan")).map_or(0, Iterator::count);
    assert_eq!(left, 0, "directories left under /run/hostchan");
}

/// One owner policy: for a container in a login session's scope (as the cgroupfs driver started
/// from a shell leaves it), the CLI and the hook give the same answer.
#[test]
fn the_cli_and_the_hook_agree_on_owners() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-owners");
    let bundle = runc_bundle(&dir.path("cli"), "s77", |c| {
        c["linux"]["cgroupsPath"] = "user.slice:session:77".into();
    });
    sb.runc_start(&bundle, "s77").ok();
    let pid = sb.runc_pid("s77");
    let cli = sb.hostchan(&["create", "--pid", &pid, "/run/hostchan/s:/s"]);
    assert_eq!(cli.code, 1, "{cli:#?}");
    let expected = "is in session-77.scope, which is a login session";
    assert!(cli.stderr.contains(expected), "{cli:#?}");
    sb.runc(&["delete", "--force", "s77"]).ok();

    let bundle = runc_bundle(&dir.path("hook"), "s78", |c| {
        c["linux"]["cgroupsPath"] = "user.slice:session:78".into();
        with_hooks(c, &[("io.hostchan.channel", "/run/hostchan/s78/s:/s")]);
    });
    let hook = sb.runc_start(&bundle, "s78");
    assert_ne!(hook.code, 0, "{hook:#?}");
    assert!(
        hook.stderr
            .contains("is in session-78.scope, which is a login session"),
        "{hook:#?}"
    );
    let _ = sb.runc(&["delete", "--force", "s78"]);
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/hostchan/s78").exists());
}

/// A container on the cgroupfs driver has no unit to bind a channel to; with the default
/// `owner.default = "require"` the hook refuses it, and its hint speaks to the operator of the
/// node, not of command-line flags the container's author has no way to pass.
#[test]
fn a_container_without_a_unit_is_told_what_its_operator_can_do() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("runc-cgroupfs");
    let bundle = runc_bundle(&dir.path("b"), "c79", |c| {
        c["linux"]["cgroupsPath"] = "/hc-cgroupfs/c79".into();
        with_hooks(c, &[("io.hostchan.channel", "/run/hostchan/c79/s:/s")]);
    });
    let hook = sb.sh(&format!(
        "runc run -d --bundle '{}' c79 </dev/null >/dev/null 2>/run/runc-c79.err; rc=$?; cat /run/runc-c79.err >&2; exit $rc",
        bundle.display()
    ));
    assert_ne!(hook.code, 0, "{hook:#?}");
    assert!(
        hook.stderr
            .contains("is in no systemd unit to bind its channels to")
            && hook.stderr.contains("owner.default = \\\"unbound\\\"")
            && !hook.stderr.contains("--unbound"),
        "{hook:#?}"
    );
    let _ = sb.run(&["runc", "delete", "--force", "c79"]);
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/hostchan/c79").exists());
}

/// Docker (Debian's docker.io, systemd cgroup driver) started inside the sandbox: `create
/// --pid` of a container, data both ways, ro enforced, the channel gone after `docker stop` and
/// after `docker rm -f`.
#[test]
fn docker_create_pid_end_to_end() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("docker");
    let rootfs = common::busybox_rootfs(&dir.0);
    let data = dir.path("data").display().to_string();
    let containerd_root = dir.path("containerd").display().to_string();
    sb.sh(&format!(
        "containerd --root {containerd_root} --state /run/x-containerd --address /run/x-containerd.sock >/run/containerd.log 2>&1 &
         dockerd --containerd /run/x-containerd.sock --data-root {data} --exec-root /run/x-docker-exec \
           -H unix:///run/x-docker.sock --iptables=false --ip6tables=false --bridge=none \
           --exec-opt native.cgroupdriver=systemd --pidfile /run/x-docker.pid >/run/dockerd.log 2>&1 &"
    ))
    .ok();
    // Debian's own client, which matches the daemon (another docker may come first on PATH).
    let docker = |args: &[&str]| {
        let mut argv = vec!["/usr/bin/docker", "-H", "unix:///run/x-docker.sock"];
        argv.extend_from_slice(args);
        sb.run(&argv)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while docker(&["info"]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "dockerd did not come up: {}",
            sb.run(&["cat", "/run/dockerd.log"]).stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    sb.sh(&format!(
        "tar -C {} -c . | /usr/bin/docker -H unix:///run/x-docker.sock import - bb:1 >/dev/null",
        rootfs.display()
    ))
    .ok();

    for (name, end) in [("d1", "stop"), ("d2", "rm")] {
        let id = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "bb:1",
            "sleep",
            "300",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", name])
            .ok()
            .stdout
            .trim()
            .to_owned();
        let rw = format!("/run/dk/{name}/rw");
        let ro = format!("/run/dk/{name}/ro");
        let made = sb
            .hostchan(&[
                "create",
                "--output",
                "json",
                "--pid",
                &pid,
                "--container",
                &id,
                &format!("{rw}:/chan:rw:1M"),
            ])
            .ok()
            .json();
        assert_eq!(made["owner"], format!("docker-{id}.scope"));
        sb.hostchan(&["create", "--pid", &pid, &format!("{ro}:/ro:ro:1M")])
            .ok();
        docker(&["exec", name, "sh", "-c", "echo from-docker > /chan/x"]).ok();
        assert_eq!(
            fs::read_to_string(sb.path(&format!("{rw}/x"))).unwrap(),
            "from-docker\n"
        );
        fs::write(sb.path(&format!("{ro}/y")), "from-host").unwrap();
        assert_eq!(
            docker(&["exec", name, "cat", "/ro/y"]).ok().stdout,
            "from-host"
        );
        let out = docker(&["exec", name, "touch", "/ro/z"]);
        assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
        match end {
            "stop" => docker(&["stop", "-t", "0", name]).ok(),
            _ => docker(&["rm", "-f", name]).ok(),
        };
        sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
        sb.assert_no_trace(&rw);
        sb.assert_no_trace(&ro);
    }
}

/// CDI: the spec `hostchan cdi-spec` writes validates against the CDI schema, and podman 4.3's
/// `--device hostchan.io/channel=hook` with the channel annotation gives the container its
/// channel (no hooks.d), removed at `podman rm`; with hooks.d as well, the second hook finds the
/// channel made and does nothing twice.
#[test]
fn podman_with_the_cdi_device() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("podman-cdi");
    let rootfs = common::busybox_rootfs(&dir.0).display().to_string();
    let spec = sb
        .hostchan(&["cdi-spec", "--hostchan", HOSTCHAN])
        .ok()
        .stdout;
    fs::write(dir.path("hostchan.json"), &spec).unwrap();
    let validator = common::repo().join("tests/data/cdi-schema/validate.py");
    let out = std::process::Command::new(&validator)
        .arg(dir.path("hostchan.json"))
        .arg(common::repo().join("packaging/cdi/hostchan.json"))
        .output()
        .expect("run the CDI schema validator (python3-jsonschema)");
    assert!(out.status.success(), "{out:#?}");
    fs::create_dir_all(sb.path("/run/cdi")).unwrap();
    fs::write(sb.path("/run/cdi/hostchan.json"), &spec).unwrap();

    let shipped = fs::read_to_string(common::repo().join("packaging/oci-hooks.d/hostchan.json"))
        .unwrap()
        .replace("/usr/bin/hostchan", HOSTCHAN);
    for (n, hooks_d) in [false, true].into_iter().enumerate() {
        let hooks = dir.path(&format!("hooks{n}"));
        fs::create_dir_all(&hooks).unwrap();
        if hooks_d {
            fs::write(hooks.join("hostchan.json"), &shipped).unwrap();
        }
        let storage = dir.path("storage").display().to_string();
        let hooks = hooks.display().to_string();
        let podman = common::Podman {
            sandbox: &sb,
            storage,
            hooks,
            runtime: None,
        };
        let podman = |args: &[&str]| podman.run(args);
        let name = format!("cdi{n}");
        let id = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--device",
            "hostchan.io/channel=hook",
            "--annotation",
            "io.hostchan.channel=/run/hostchan/{id}/a:/a:rw:1M",
            "--rootfs",
            &rootfs,
            "sleep",
            "1000",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
        podman(&["exec", &name, "sh", "-c", "echo via-cdi > /a/x"]).ok();
        assert_eq!(
            fs::read_to_string(sb.path(&format!("/run/hostchan/{id}/a/x"))).unwrap(),
            "via-cdi\n"
        );
        assert_eq!(sb.channel_units().len(), 1, "{:?}", sb.channel_units());
        podman(&["rm", "-f", "-t", "0", &name]).ok();
        sb.wait_for(|| sb.channel_units().is_empty(), "the channel units to go");
        sb.assert_no_trace(&format!("/run/hostchan/{id}/a"));
    }
}

/// Kubernetes: a pod as CRI-O and as containerd hand it to the runtime (every pod annotation in
/// every container, the sandbox included, with the engine's own annotations saying which
/// container is which), run with runc and the hook. Only the named container gets a named
/// channel, every app and init container gets its own templated one, the sandbox none.
#[test]
fn pods_as_cri_o_and_containerd_shape_them() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("pods");
    let pod_annotations = [
        (
            "io.hostchan.channel.logs/container.app",
            "/run/hostchan/{pod_namespace}/{pod_name}/logs:/logs:rw:1M",
        ),
        (
            "io.hostchan.channel.scratch",
            "/run/hostchan/{pod_namespace}/{pod_uid}/{container}:/scratch:rw:1M",
        ),
    ];
    for engine in ["crio", "containerd"] {
        let uid = format!("{engine}-0b7c2a9e");
        let prefix = if engine == "crio" {
            "crio"
        } else {
            "cri-containerd"
        };
        let mut started = Vec::new();
        for (kind, name) in [
            ("sandbox", "POD"),
            ("container", "init-db"),
            ("container", "app"),
            ("container", "sidecar"),
        ] {
            let id = format!("{engine}-{}", name.to_lowercase());
            let mut annotations: Vec<(String, String)> = pod_annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let engine_keys: Vec<(&str, String)> = match engine {
                "crio" => vec![
                    ("io.kubernetes.cri-o.ContainerType", kind.to_owned()),
                    (
                        "io.kubernetes.cri-o.Metadata",
                        format!(r#"{{"name":"{name}","attempt":0}}"#),
                    ),
                    ("io.kubernetes.pod.name", "web-1".to_owned()),
                    ("io.kubernetes.pod.namespace", "shop".to_owned()),
                    ("io.kubernetes.pod.uid", uid.clone()),
                ],
                _ => vec![
                    ("io.kubernetes.cri.container-type", kind.to_owned()),
                    ("io.kubernetes.cri.container-name", name.to_owned()),
                    ("io.kubernetes.cri.sandbox-name", "web-2".to_owned()),
                    ("io.kubernetes.cri.sandbox-namespace", "shop".to_owned()),
                    ("io.kubernetes.cri.sandbox-uid", uid.clone()),
                ],
            };
            annotations.extend(engine_keys.into_iter().map(|(k, v)| (k.to_owned(), v)));
            let prefix = if engine == "crio" {
                "crio"
            } else {
                "cri-containerd"
            };
            let bundle = runc_bundle(&dir.path(&id), &id, |c| {
                let pairs: Vec<(&str, &str)> = annotations
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                with_hooks(c, &pairs);
                c["linux"]["cgroupsPath"] = format!("system.slice:{prefix}:{id}").into();
            });
            sb.runc_start(&bundle, &id).ok();
            started.push(id);
        }
        let list = sb.hostchan(&["list", "--output", "json"]).ok().json();
        let mut paths: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["host_path"].as_str().unwrap().to_owned())
            .collect();
        paths.sort();
        let pod_name = if engine == "crio" { "web-1" } else { "web-2" };
        assert_eq!(
            paths,
            [
                format!("/run/hostchan/shop/{uid}/app"),
                format!("/run/hostchan/shop/{uid}/init-db"),
                format!("/run/hostchan/shop/{uid}/sidecar"),
                format!("/run/hostchan/shop/{pod_name}/logs"),
            ],
            "{engine}"
        );
        let app = format!("{engine}-app");
        sb.runc_exec(&app, "echo app-log > /logs/x").ok();
        assert_eq!(
            fs::read_to_string(sb.path(&format!("/run/hostchan/shop/{pod_name}/logs/x"))).unwrap(),
            "app-log\n"
        );
        let sidecar = sb.runc_exec(&format!("{engine}-sidecar"), "test -e /logs");
        assert_ne!(sidecar.code, 0, "the sidecar got the app's channel");
        let owners: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["owner"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            owners.iter().all(|o| o.starts_with(&format!("{prefix}-"))),
            "{owners:?}"
        );
        for id in started {
            sb.runc(&["delete", "--force", &id]).ok();
        }
        sb.wait_for(|| sb.channel_units().is_empty(), "the pod's channels to go");
        assert_eq!(sb.record_files(), Vec::<String>::new());
    }
}

/// podman with the same annotations: one that names a container applies when the container
/// carries the kubelet's name label, and not otherwise; templates work as in a pod.
#[test]
fn podman_with_kubernetes_annotations() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("podman-kube");
    let rootfs = common::busybox_rootfs(&dir.0).display().to_string();
    let hooks = dir.path("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let shipped = fs::read_to_string(common::repo().join("packaging/oci-hooks.d/hostchan.json"))
        .unwrap()
        .replace("/usr/bin/hostchan", HOSTCHAN);
    fs::write(hooks.join("hostchan.json"), shipped).unwrap();
    let storage = dir.path("storage").display().to_string();
    let hooks = hooks.display().to_string();
    let podman = common::Podman {
        sandbox: &sb,
        storage,
        hooks,
        runtime: Some("runc"),
    };
    let podman = |args: &[&str]| podman.run(args);
    let run = |name: &str, label: Option<&str>| {
        let label = label.map(|l| format!("io.kubernetes.container.name={l}"));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--annotation",
            "io.hostchan.channel.logs/container.app=/run/hostchan/{id}/{container}-logs:/logs:rw:1M",
        ];
        if let Some(label) = &label {
            args.extend(["--annotation", label.as_str()]);
        }
        args.extend([
            "--annotation",
            "io.hostchan.channel.id=/run/hostchan/{id}/id:/id:rw:1M",
            "--rootfs",
            &rootfs,
            "sleep",
            "1000",
        ]);
        podman(&args).ok().stdout.trim().to_owned()
    };
    let app = run("p-app", Some("app"));
    let other = run("p-other", None);
    assert!(sb
        .mount_options(&format!("/run/hostchan/{app}/app-logs"))
        .is_some());
    assert!(sb
        .mount_options(&format!("/run/hostchan/{app}/id"))
        .is_some());
    assert!(sb
        .mount_options(&format!("/run/hostchan/{other}/id"))
        .is_some());
    assert_eq!(sb.channel_units().len(), 3, "{:?}", sb.channel_units());
    podman(&["rm", "-f", "-t", "0", "p-app", "p-other"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
    assert!(!sb.path(&format!("/run/hostchan/{app}")).exists());
    assert!(!sb.path(&format!("/run/hostchan/{other}")).exists());
}

/// systemd-nspawn: a machine registered with machined lives in machine-<name>.scope; `create
/// --pid` of its leader binds the channel to that scope and attaches it inside the machine, and
/// the channel goes when the machine is terminated.
#[test]
fn systemd_nspawn_machine() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("nspawn");
    let root = common::busybox_rootfs(&dir.0);
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::write(root.join("usr/lib/os-release"), "ID=busybox\n").unwrap();
    sb.sh(&format!(
        "systemd-nspawn -q -D {} --machine=web --register=yes /bin/sleep 1000 </dev/null >/run/nspawn.log 2>&1 &",
        root.display()
    ))
    .ok();
    sb.wait_for(
        || sb.unit_state("machine-web.scope") == "active",
        "the machine to be registered",
    );
    let leader = sb
        .run(&["machinectl", "show", "web", "-p", "Leader", "--value"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let made = sb
        .hostchan(&[
            "create",
            "--output",
            "json",
            "--pid",
            &leader,
            "/run/hostchan/ns:/chan:rw:1M",
        ])
        .ok()
        .json();
    assert_eq!(made["owner"], "machine-web.scope");
    fs::write(sb.path("/run/hostchan/ns/x"), "from-host").unwrap();
    let inside = sb.run(&["nsenter", "-t", &leader, "-m", "-r", "/bin/cat", "/chan/x"]);
    assert_eq!(inside.ok().stdout, "from-host");
    sb.run(&["machinectl", "terminate", "web"]).ok();
    sb.wait_for(
        || sb.channel_units().is_empty(),
        "the channel to go with the machine",
    );
    sb.assert_no_trace("/run/hostchan/ns");
}

/// Tenants (issue 20, class 2): pods of namespace `evil` cannot take, shadow or block the paths
/// of namespace `shop`, literally or through a parent of what shop's templates expand to, nor
/// pose as a shop pod by writing the other runtime's namespace key; their own subtree works.
#[test]
fn one_namespace_never_takes_anothers_paths() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("tenants");
    // A containerd-shaped pod container in `namespace`, with `extra` annotations.
    let start = |id: &str, namespace: &str, extra: &[(&str, &str)]| {
        let mut annotations = vec![
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", "app"),
            ("io.kubernetes.cri.sandbox-name", "web"),
            ("io.kubernetes.cri.sandbox-namespace", namespace),
            ("io.kubernetes.cri.sandbox-uid", "u-1"),
        ];
        annotations.extend_from_slice(extra);
        let bundle = runc_bundle(&dir.path(id), id, |c| {
            with_hooks(c, &annotations);
            c["linux"]["cgroupsPath"] = format!("system.slice:cri-containerd:{id}").into();
        });
        sb.runc_start(&bundle, id)
    };
    for (id, spec) in [
        ("evil1", "/run/hostchan/shop:/x:rw:1M"),
        ("evil2", "/run/hostchan/shop/web/logs:/x:rw:1M"),
        ("evil3", "/run/hostchan/shop/web:/x:rw:1M"),
        ("evil4", "/run/hostchan/{pod_name}/logs:/x:rw:1M"),
    ] {
        let out = start(id, "evil", &[("io.hostchan.channel", spec)]);
        assert_ne!(out.code, 0, "{id}: {out:#?}");
        assert!(
            out.stderr.contains(
                "is outside the subtree of pod namespace evil: its annotations may only name paths under /run/hostchan/evil/"
            ),
            "{id}: {out:#?}"
        );
        let _ = sb.runc(&["delete", "--force", id]);
    }
    // Posing as shop: the runtime's key says evil, the pod author's says shop.
    let out = start(
        "evil5",
        "evil",
        &[
            ("io.kubernetes.pod.namespace", "shop"),
            (
                "io.hostchan.channel",
                "/run/hostchan/shop/web/logs:/x:rw:1M",
            ),
        ],
    );
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("disagree about the pod"), "{out:#?}");
    let _ = sb.runc(&["delete", "--force", "evil5"]);
    assert!(sb.channel_units().is_empty());
    assert!(!sb.path("/run/hostchan/shop").exists());

    // evil's own subtree works, and shop's pod gets exactly its path.
    start(
        "evil6",
        "evil",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/web/logs:/x:rw:1M",
        )],
    )
    .ok();
    start(
        "shop1",
        "shop",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/web/logs:/x:rw:1M",
        )],
    )
    .ok();
    assert!(sb.mount_options("/run/hostchan/evil/web/logs").is_some());
    assert!(sb.mount_options("/run/hostchan/shop/web/logs").is_some());
    for id in ["evil6", "shop1"] {
        sb.runc(&["delete", "--force", id]).ok();
    }
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
    assert!(!sb.path("/run/hostchan/shop").exists());
}

/// An annotation never overrides the operator (issue 20, class 3): the owner policy holds for
/// the delete lifetime too, the delete lifetime needs the operator's (or the engine's hook
/// file's) leave, and a root owner must be the container's own root.
#[test]
fn annotations_never_override_the_operator() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("override");
    let start = |id: &str, hook_args: &[&str], cgroup: &str, annotations: &[(&str, &str)]| {
        let bundle = runc_bundle(&dir.path(id), id, |c| {
            with_hooks(c, annotations);
            let mut args = vec!["hostchan", "oci-hook"];
            args.extend_from_slice(hook_args);
            let hook = serde_json::json!([{ "path": HOSTCHAN, "args": args }]);
            c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
            c["linux"]["cgroupsPath"] = cgroup.into();
        });
        let out = sb.runc_start(&bundle, id);
        let _ = sb.runc(&["delete", "--force", id]);
        out
    };
    let delete = [
        ("io.hostchan.channel", "/run/hostchan/{id}/a:/a:rw:1M"),
        ("io.hostchan.lifetime", "delete"),
    ];
    // A unit no engine made: refused for the delete lifetime as for stop.
    let out = start("o1", &["--engine-deletes"], "system.slice:misc:o1", &delete);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("is in misc-o1.scope, which is not a container engine's unit"),
        "{out:#?}"
    );
    // A hook that does not say the engine deletes containers through hostchan.
    let out = start("o2", &[], "system.slice:runc:o2", &delete);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("io.hostchan.lifetime=delete\\\": is not allowed here"),
        "{out:#?}"
    );
    // Somebody else's uid as the channel's owner, in a container without a user namespace.
    let out = start(
        "o3",
        &[],
        "system.slice:runc:o3",
        &[
            ("io.hostchan.channel", "/run/hostchan/{id}/a:/a:rw:1M"),
            ("io.hostchan.root-owner", "1000:1000"),
        ],
    );
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("is not the container's root, which its user namespace maps to 0:0"),
        "{out:#?}"
    );
    assert!(sb.channel_units().is_empty(), "{:?}", sb.channel_units());
    assert!(sb.units_matching("hostchan-keep@*").is_empty());
    assert_eq!(sb.record_files(), Vec::<String>::new());
    // The engine's hook file says it deletes: the same annotations make a kept channel.
    let bundle = runc_bundle(&dir.path("o4"), "o4", |c| {
        with_hooks(c, &delete);
        let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook", "--engine-deletes"] }]);
        c["hooks"] = serde_json::json!({ "createRuntime": hook });
    });
    sb.runc_start(&bundle, "o4").ok();
    assert_eq!(sb.unit_state("hostchan-keep@o4.service"), "active");
    sb.hostchan(&["delete", "--container", "o4"]).ok();
    sb.runc(&["delete", "--force", "o4"]).ok();
    sb.assert_no_trace("/run/hostchan/o4/a");
}

/// One container's annotations are bounded in count and total size (issue 20, class 6): a
/// hundred channels, or two of half the memory each, are refused with one line, and nothing is
/// made.
#[test]
fn a_containers_channels_are_bounded() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("bounded");
    let many: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("io.hostchan.channel.c{i}"),
                format!("/run/hostchan/{{id}}/c{i}:/c{i}:rw:4k"),
            )
        })
        .collect();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let half_bytes = total_kib * 1024 / 2;
    let two_halves = vec![
        (
            "io.hostchan.channel.a".to_owned(),
            format!("/run/hostchan/{{id}}/a:/a:rw:{half_bytes}"),
        ),
        (
            "io.hostchan.channel.b".to_owned(),
            format!("/run/hostchan/{{id}}/b:/b:rw:{half_bytes}"),
        ),
    ];
    for (id, annotations, expected) in [
        (
            "b1",
            many,
            "asks for more than hook.max_channels_per_container (16)",
        ),
        ("b2", two_halves, "above hook.max_total_size"),
    ] {
        let pairs: Vec<(&str, &str)> = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let bundle = runc_bundle(&dir.path(id), id, |c| with_hooks(c, &pairs));
        let out = sb.runc_start(&bundle, id);
        assert_ne!(out.code, 0, "{id}: {out:#?}");
        assert!(out.stderr.contains(expected), "{id}: {out:#?}");
        let _ = sb.runc(&["delete", "--force", id]);
    }
    assert!(sb.channel_units().is_empty());
    assert_eq!(sb.record_files(), Vec::<String>::new());
    assert!(!sb.path("/run/hostchan/b1").exists() && !sb.path("/run/hostchan/b2").exists());
}

/// The hook's cost does not grow with annotations that are not hostchan's (issue 20, class 8):
/// a container with 1000 other annotations (large ones too) and one channel gets its channel as
/// one with none does.
#[test]
fn a_thousand_other_annotations_cost_the_hook_nothing() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("annotations");
    let mut annotations: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                format!("example.com/key-{i}"),
                format!("{i}-{}", "v".repeat(200)),
            )
        })
        .collect();
    annotations.push((
        "io.hostchan.channel".to_owned(),
        "/run/hostchan/many1/a:/a:rw:1M".to_owned(),
    ));
    let pairs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let bundle = runc_bundle(&dir.0, "many1", |c| with_hooks(c, &pairs));
    let started = std::time::Instant::now();
    sb.runc_start(&bundle, "many1").ok();
    let took = started.elapsed();
    assert!(sb.mount_options("/run/hostchan/many1/a").is_some());
    sb.runc_exec("many1", "echo hi > /a/x").ok();
    sb.runc(&["delete", "--force", "many1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel to go");
    sb.assert_no_trace("/run/hostchan/many1/a");
    eprintln!("runc run with 1000 other annotations and one channel: {took:?}");
}
