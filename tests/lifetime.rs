//! iSulad's lifetime: a channel that lives from the container's start to its deletion, through
//! stops and starts, with the shipped iSulad hook file (prestart and poststop) under runc.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::{runc_bundle, Sandbox, TempDir, HOSTCHAN};

/// A runc bundle whose hooks are the shipped iSulad hook file's, pointed at this build.
fn isulad_bundle(dir: &TempDir, name: &str, annotations: &[(&str, &str)]) -> PathBuf {
    let shipped: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(common::repo().join("packaging/isulad/hostchan-hooks.json")).unwrap(),
    )
    .unwrap();
    let hooks = serde_json::from_str::<serde_json::Value>(
        &shipped.to_string().replace("/usr/bin/hostchan", HOSTCHAN),
    )
    .unwrap();
    runc_bundle(&dir.path(name), name, |c| {
        c["hooks"] = hooks;
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        c["annotations"] = map.into();
    })
}

/// Stop and start keep the channel and its contents, attached again in the new container;
/// `hostchan delete --container` removes it everywhere, the container's copy included.
#[test]
fn delete_lifetime_survives_stop_and_start() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("lifetime");
    let bundle = isulad_bundle(
        &dir,
        "k1",
        &[
            ("io.hostchan.channel", "/run/hostchan/k1/keep:/chan:rw:1M"),
            ("io.hostchan.lifetime", "delete"),
        ],
    );
    sb.runc_start(&bundle, "k1").ok();
    sb.runc_exec("k1", "echo before-stop > /chan/f").ok();
    let keeper = "hostchan-keep@k1.service";
    assert_eq!(sb.unit_state(keeper), "active");
    assert_eq!(
        sb.property("run-hostchan-k1-keep.mount", "BindsTo"),
        keeper,
        "bound to the keeper, not the container's scope"
    );

    // Stop: runc kills the container and runs poststop; the channel stays, with its file.
    sb.runc(&["kill", "k1", "KILL"]).ok();
    sb.wait_for(
        || sb.runc(&["state", "k1"]).stdout.contains("stopped"),
        "the container to stop",
    );
    sb.runc(&["delete", "k1"]).ok();
    assert!(sb.mount_options("/run/hostchan/k1/keep").is_some());
    assert_eq!(
        fs::read_to_string(sb.path("/run/hostchan/k1/keep/f")).unwrap(),
        "before-stop\n"
    );

    // Start again: the hook attaches the same channel in the new container.
    sb.runc_start(&bundle, "k1").ok();
    assert_eq!(
        sb.runc_exec("k1", "cat /chan/f").ok().stdout,
        "before-stop\n"
    );
    sb.runc_exec("k1", "echo after-start >> /chan/f").ok();
    // A different spec for the path is still refused.
    let pid = sb.runc_pid("k1");
    let out = sb.hostchan(&[
        "create",
        "--lifetime",
        "delete",
        "--container",
        "k1",
        "--pid",
        &pid,
        "/run/hostchan/k1/keep:/chan:rw:2M",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("is already a channel"), "{out:#?}");

    // Delete: everywhere, in one go.
    let out = sb
        .hostchan(&["delete", "--container", "k1", "--output", "json"])
        .ok()
        .json();
    assert_eq!(out["deleted"].as_array().unwrap().len(), 1, "{out}");
    let mounts = sb.runc_exec("k1", "cat /proc/mounts").ok().stdout;
    assert!(!mounts.contains(" /chan "), "{mounts}");
    sb.wait_for(|| sb.unit_state(keeper) == "gone", "the keeper to go");
    sb.assert_no_trace("/run/hostchan/k1/keep");
    sb.runc(&["delete", "--force", "k1"]).ok();
}

/// An engine that never says "delete": gc removes a channel whose container has not been seen
/// within the idle limit, and keeps one whose container runs.
/// `io.hostchan.on-restart=clear`: the channel starts empty at the container's next start
/// (its pages no longer charged to anyone), and a link the container left pointing out of it
/// takes nothing with it; without the annotation the contents stay (above).
#[test]
fn on_restart_clear_empties_the_channel_at_the_next_start() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("lifetime-clear");
    let bundle = isulad_bundle(
        &dir,
        "k3",
        &[
            ("io.hostchan.channel", "/run/hostchan/k3/c:/chan:rw:4M"),
            ("io.hostchan.lifetime", "delete"),
            ("io.hostchan.on-restart", "clear"),
        ],
    );
    fs::write(sb.path("/run/outside"), "host file").unwrap();
    sb.runc_start(&bundle, "k3").ok();
    sb.runc_exec(
        "k3",
        "mkdir -p /chan/d/e && dd if=/dev/zero of=/chan/d/e/big bs=1M count=2 && ln -s /run/outside /chan/link && ln -s / /chan/root",
    )
    .ok();
    assert!(sb.path("/run/hostchan/k3/c/d/e/big").exists());
    sb.runc(&["kill", "k3", "KILL"]).ok();
    sb.wait_for(
        || sb.runc(&["state", "k3"]).stdout.contains("stopped"),
        "the container to stop",
    );
    sb.runc(&["delete", "k3"]).ok();
    // Kept while stopped: a host daemon may still read it.
    assert!(sb.path("/run/hostchan/k3/c/d/e/big").exists());

    sb.runc_start(&bundle, "k3").ok();
    assert_eq!(sb.runc_exec("k3", "ls -A /chan").ok().stdout, "");
    assert_eq!(
        fs::read_dir(sb.path("/run/hostchan/k3/c")).unwrap().count(),
        0
    );
    assert_eq!(
        fs::read_to_string(sb.path("/run/outside")).unwrap(),
        "host file"
    );
    let options = sb
        .mount_options("/run/hostchan/k3/c")
        .expect("still mounted");
    assert!(options.contains("size=4096k"), "{options}");
    // journald stores a line a moment after it is written: waited for, as elsewhere.
    sb.journal_with(
        "run-hostchan-k3-c.mount",
        &["emptied /run/hostchan/k3/c for the container's restart (5 entries removed)"],
    );
    // A second hook in the same start (hooks.d and CDI) is no restart: nothing is emptied.
    sb.runc_exec("k3", "echo second > /chan/s").ok();
    let out = sb.sh(&format!(
        "runc state k3 | {HOSTCHAN} oci-hook --stage prestart --engine-deletes"
    ));
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(sb.runc_exec("k3", "cat /chan/s").ok().stdout, "second\n");

    sb.runc(&["kill", "k3", "KILL"]).ok();
    sb.wait_for(
        || sb.runc(&["state", "k3"]).stdout.contains("stopped"),
        "the container to stop",
    );
    sb.runc(&["delete", "k3"]).ok();
    sb.hostchan(&["delete", "--container", "k3"]).ok();
    sb.assert_no_trace("/run/hostchan/k3/c");
}

#[test]
fn the_idle_limit_removes_a_forgotten_channel() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("idle");
    fs::write(dir.path("config.toml"), "[channels]\nidle_limit = \"1s\"\n").unwrap();
    let config = dir.path("config.toml").display().to_string();
    for name in ["gone1", "runs1"] {
        let bundle = runc_bundle(&dir.path(name), name, |_| {});
        sb.runc_start(&bundle, name).ok();
        let pid = sb.runc_pid(name);
        sb.hostchan(&[
            "--config",
            &config,
            "create",
            "--lifetime",
            "delete",
            "--container",
            name,
            "--pid",
            &pid,
            &format!("/run/hostchan/{name}/c:/chan:rw:1M"),
        ])
        .ok();
    }
    // gone1's engine forgets it: no poststop, no delete.
    sb.runc(&["delete", "--force", "gone1"]).ok();
    std::thread::sleep(Duration::from_millis(2100));
    let gc = sb.hostchan(&["gc"]).ok();
    assert!(
        gc.stdout
            .contains("Deleted idle channel /run/hostchan/gone1/c"),
        "{gc:#?}"
    );
    assert!(!sb.path("/run/hostchan/gone1").exists());
    assert_eq!(sb.mount_options("/run/hostchan/gone1/c"), None);
    assert_eq!(sb.record_files(), ["run-hostchan-runs1-c.json"]);
    sb.wait_for(
        || sb.unit_state("hostchan-keep@gone1.service") == "gone",
        "the forgotten container's keeper to go",
    );
    // The running container's channel stays, past the limit too.
    assert!(
        sb.mount_options("/run/hostchan/runs1/c").is_some(),
        "{gc:#?}"
    );
    sb.hostchan(&["delete", "--container", "runs1"]).ok();
    sb.runc(&["delete", "--force", "runs1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channels to go");
}

/// A container whose root is mapped to an unprivileged host user owns its channel's root when
/// hostchan is told so (`io.hostchan.root-owner`), and can then use it as root expects.
#[test]
fn a_mapped_root_owns_its_channel() {
    let sb = Sandbox::boot();
    let dir = TempDir::new("userns");
    let bundle = runc_bundle(&dir.path("u1"), "u1", |c| {
        common::with_user_namespace(c);
        let hook = serde_json::json!([{ "path": HOSTCHAN, "args": ["hostchan", "oci-hook"] }]);
        c["hooks"] = serde_json::json!({ "createRuntime": hook, "poststop": hook });
        c["annotations"] = serde_json::json!({
            "io.hostchan.channel.owned": "/run/hostchan/u1/owned:/owned:rw:1M",
            "io.hostchan.root-owner": "100000:100000",
        });
    });
    sb.runc_start(&bundle, "u1").ok();
    let meta = fs::metadata(sb.path("/run/hostchan/u1/owned")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (100000, 100000));
    // Inside, the channel is root's: root may make it private and write into it.
    let out = sb
        .runc_exec(
            "u1",
            "chmod 0700 /owned && echo mine > /owned/f && ls -ldn /owned",
        )
        .ok();
    assert!(
        out.stdout.starts_with("drwx------    2 0        0"),
        "{out:#?}"
    );
    let file = fs::metadata(sb.path("/run/hostchan/u1/owned/f")).unwrap();
    assert_eq!(file.uid(), 100000, "written by the mapped root");
    sb.runc(&["delete", "--force", "u1"]).ok();
    sb.wait_for(|| sb.channel_units().is_empty(), "the channel to go");
}
