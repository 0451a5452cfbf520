//! Kubernetes for real: containerd (fetched by tests/sandbox/containerd.sh: Debian 13's 1.7, or
//! with `HOSTCHAN_CONTAINERD=2` Debian sid's 2.x; tests/run runs this suite with each) inside the
//! sandboxed systemd, with NRI on, `SystemdCgroup = true` and a busybox image built
//! offline; `hostchan nri` as a unit beside it; host-network pods run through containerd's real
//! CRI API by a CRI client written here (crates/cri-api, tonic).

mod common;
#[path = "common/cri.rs"]
mod cri;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Sandbox, HOSTCHAN};
use cri::Cri;

const NRI_SOCKET: &str = "/run/hc-containerd/nri.sock";

/// The containerd series under test: `HOSTCHAN_CONTAINERD`, 1.7 unless it says 2.
fn series() -> &'static str {
    match std::env::var("HOSTCHAN_CONTAINERD").as_deref() {
        Ok("2") => "2",
        Ok("1.7") | Err(_) => "1.7",
        Ok(other) => panic!("HOSTCHAN_CONTAINERD={other}: use 1.7 or 2"),
    }
}

/// containerd, unpacked once for the whole run, with its image and configuration.
fn containerd_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::repo().join(match series() {
            "2" => "target/containerd-2",
            _ => "target/containerd",
        });
        let script = common::repo().join("tests/sandbox/containerd.sh");
        for args in [
            vec!["fetch", series()],
            vec!["image"],
            vec!["config", NRI_SOCKET],
        ] {
            let status = std::process::Command::new(&script)
                .arg(args[0])
                .arg(&dir)
                .args(&args[1..])
                .status()
                .expect("run containerd.sh");
            assert!(status.success(), "containerd.sh {args:?} failed");
        }
        dir
    })
}

struct Node {
    sandbox: Sandbox,
    cri: Cri,
    /// The plugin's unit, removed after the sandbox is gone.
    units: common::TempDir,
}

/// A unit directory with the shipped hostchan-nri.service, its ExecStart this build's binary
/// on the test containerd's socket.
fn plugin_unit() -> common::TempDir {
    static NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let node = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = common::TempDir::new(&format!("nri-unit-{node}"));
    let shipped = std::fs::read_to_string(common::repo().join("systemd/hostchan-nri.service"))
        .expect("read systemd/hostchan-nri.service");
    let unit = shipped.replace(
        "ExecStart=/usr/bin/hostchan nri",
        &format!("ExecStart={HOSTCHAN} nri --socket {NRI_SOCKET}"),
    );
    assert_ne!(unit, shipped, "the shipped unit's ExecStart changed");
    std::fs::write(dir.path("hostchan-nri.service"), unit).expect("write the plugin's unit");
    dir
}

/// The node's CRI calls are the client's.
impl std::ops::Deref for Node {
    type Target = Cri;
    fn deref(&self) -> &Cri {
        &self.cri
    }
}

impl Node {
    fn start() -> Node {
        let node = Node::without_plugin();
        node.start_plugin();
        node
    }

    fn without_plugin() -> Node {
        let dir = containerd_dir();
        let units = plugin_unit();
        let sandbox = Sandbox::boot_with(&common::Boot {
            extra_units: Some(units.0.clone()),
            ..Default::default()
        });
        sandbox
            .run(&[
                dir.join("../../tests/sandbox/containerd.sh")
                    .to_str()
                    .unwrap(),
                "start",
                dir.to_str().unwrap(),
            ])
            .ok();
        Node {
            cri: Cri::connect(sandbox.path("/run/hc-containerd/containerd.sock")),
            sandbox,
            units,
        }
    }

    fn plugin_journal(&self) -> String {
        self.sandbox
            .run(&[
                "journalctl",
                "--no-pager",
                "-o",
                "cat",
                "-u",
                "hostchan-nri.service",
            ])
            .stdout
    }

    fn synchronizations(&self) -> usize {
        self.plugin_journal().matches("synchronized with").count()
    }

    /// The plugin as the packages run it: the shipped unit (installed at boot), Type=notify,
    /// so started once it has registered and synchronized.
    fn start_plugin(&self) {
        let before = self.synchronizations();
        self.sandbox
            .run(&["systemctl", "start", "hostchan-nri.service"])
            .ok();
        // Active (READY=1, which the plugin sends after its first Synchronize); journald
        // stores the line a moment after it is written, and stamps it then.
        assert_eq!(self.sandbox.unit_state("hostchan-nri.service"), "active");
        self.sandbox.wait_for(
            || self.synchronizations() > before,
            "the plugin's Synchronize line in the journal",
        );
    }

    fn stop_plugin(&self) {
        self.sandbox
            .run(&["systemctl", "stop", "hostchan-nri"])
            .ok();
    }

    fn host(&self, script: &str) -> String {
        self.sandbox.sh(script).ok().stdout
    }
}

#[test]
fn a_pod_gets_its_channel_through_nri_and_loses_it_with_the_container() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/web/data";
    let pod = node.run_pod(
        "team-a",
        "web",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}/data:/data:rw:1M",
        )],
    );
    let container = node.run_container(&pod, "app", 0);

    // The deadline comes from the runtime where it says (NRI 0.7+, containerd 2.x), else from
    // --request-timeout, 2 s by default: containerd's own value in both configurations.
    let journal = node.plugin_journal();
    let configured = journal
        .lines()
        .find(|line| line.starts_with("configured by containerd"))
        .unwrap_or_else(|| panic!("no Configure line: {journal}"));
    assert!(
        configured.contains("answering within 1500 ms (the runtime's request timeout is 2000 ms"),
        "{configured}"
    );
    assert_eq!(
        configured.contains("as --request-timeout says"),
        series() == "1.7",
        "{configured}"
    );

    // The host side: a systemd mount unit with the spec's size and mode.
    let options = node
        .sandbox
        .mount_options(host_path)
        .expect("the channel is mounted");
    assert!(options.contains("size=1024k"), "{options}");
    assert_eq!(node.host(&format!("stat -c %a {host_path}")), "1777\n");
    let unit = hostchan::mount_unit_name(std::path::Path::new(host_path));
    assert_eq!(node.sandbox.unit_state(&unit), "active");
    assert_eq!(
        node.sandbox.property(&unit, "BindsTo"),
        format!("cri-containerd-{}.scope", pod.id),
        "bound to the pod's unit until the container has its own"
    );
    assert_eq!(
        node.sandbox
            .unit_state(&format!("hostchan-bind@{container}.service")),
        "active"
    );

    // Both sides see each other's files.
    node.host(&format!("echo from-host > {host_path}/h"));
    let (code, out) = node.exec(
        &container,
        "cat /data/h && echo from-pod > /data/p && grep ' /data ' /proc/mounts",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from-host"), "{out}");
    assert!(out.contains("tmpfs /data tmpfs rw,nosuid,nodev"), "{out}");
    assert_eq!(node.host(&format!("cat {host_path}/p")), "from-pod\n");

    // The size holds inside the container.
    let (code, out) = node.exec(&container, "dd if=/dev/zero of=/data/big bs=64k count=32");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");

    node.remove_container(&container);
    node.sandbox.assert_no_trace(host_path);
    assert_eq!(
        node.sandbox
            .unit_state(&format!("hostchan-bind@{container}.service")),
        "gone"
    );
    node.remove_pod(&pod);
}

/// The plugin connects to the system bus for each request that asks systemd anything, and
/// each connection goes with its request: 6 pods with a channel made and removed leave it with
/// the bus connections it had. (Left open, they reached the bus's limit of connections for
/// root after a few hundred requests of the bench: "LimitsExceeded", every pod refused.)
#[test]
fn the_plugin_keeps_no_bus_connection_per_request() {
    let node = Node::start();
    let connections = || -> usize {
        let pid = node.host("systemctl show -P MainPID hostchan-nri.service");
        let pid = pid.trim();
        node.host("busctl list --unique --no-legend --no-pager")
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(pid))
            .count()
    };
    let cycle = |name: &str| {
        let pod = node.run_pod(
            "team-a",
            name,
            &[(
                "io.hostchan.channel",
                "/run/hostchan/{pod_namespace}/{pod_name}/d:/d:rw:1M",
            )],
        );
        let container = node.run_container(&pod, "app", 0);
        node.remove_container(&container);
        node.remove_pod(&pod);
        node.sandbox
            .assert_no_trace(&format!("/run/hostchan/team-a/{name}/d"));
    };
    cycle("warm");
    let before = connections();
    for i in 0..6 {
        cycle(&format!("p{i}"));
    }
    // Its bus connections close a moment after each request's end.
    let mut after = connections();
    for _ in 0..50 {
        if after <= before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = connections();
    }
    assert!(
        after <= before,
        "the plugin had {before} bus connections, and {after} after 6 pods"
    );
}

#[test]
fn a_pod_lifetime_channel_outlives_a_container_restart_and_goes_with_the_pod() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/cache";
    let pod = node.run_pod(
        "team-a",
        "cache",
        &[
            ("io.hostchan.channel", "/run/hostchan/team-a/cache:/cache"),
            ("io.hostchan.lifetime", "pod"),
        ],
    );
    let first = node.run_container(&pod, "app", 0);
    assert_eq!(node.exec(&first, "echo kept > /cache/f").0, 0);
    node.remove_container(&first);
    assert_eq!(node.host(&format!("cat {host_path}/f")), "kept\n");

    // The kubelet's restart: a new container of the same name in the same pod.
    let second = node.run_container(&pod, "app", 1);
    let (code, out) = node.exec(&second, "cat /cache/f");
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    node.remove_container(&second);
    node.remove_pod(&pod);
    node.sandbox.assert_no_trace(host_path);
}

#[test]
fn shm_size_gives_every_container_of_the_pod_one_dev_shm_of_that_size() {
    let node = Node::start();
    // The pod's own /dev/shm, in its namespace's subtree under its uid.
    let host_path = "/run/hostchan/team-a/uid-team-a-ml/shm";
    let pod = node.run_pod("team-a", "ml", &[("io.hostchan.shm-size", "8M")]);
    let trainer = node.run_container(&pod, "trainer", 0);
    let loader = node.run_container(&pod, "loader", 0);

    let options = node
        .sandbox
        .mount_options(host_path)
        .expect("the pod's /dev/shm channel is mounted on the host");
    assert!(options.contains("size=8192k"), "{options}");
    let unit = hostchan::mount_unit_name(std::path::Path::new(host_path));
    assert_eq!(
        node.sandbox.property(&unit, "BindsTo"),
        format!("cri-containerd-{}.scope", pod.id),
        "the pod's, bound to its sandbox"
    );
    for container in [&trainer, &loader] {
        // containerd's 64 MiB /dev/shm is replaced: what is at /dev/shm is the channel (under
        // it, only the bind of the channel's host directory that the tmpfs reached by
        // propagation when the plugin answered before PID 1 mounted it).
        let (code, out) = node.exec(
            container,
            "grep ' /dev/shm ' /proc/self/mountinfo; df -k /dev/shm | tail -1",
        );
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let (df, mounts) = lines.split_last().expect("output");
        assert!(
            !out.contains("size=65536k"),
            "the runtime's /dev/shm is left: {out}"
        );
        let top = mounts.last().copied().unwrap_or_default();
        assert!(
            top.contains(" - tmpfs ") && top.contains("size=8192k"),
            "{out}"
        );
        assert!(
            mounts
                .iter()
                .all(|line| line.contains("/hostchan/team-a/uid-team-a-ml/shm ")
                    || line.contains("size=8192k")),
            "only the channel at /dev/shm: {out}"
        );
        assert_eq!(df.split_whitespace().nth(1), Some("8192"), "{out}");
    }
    // Written by one, read by the other and by the host.
    assert_eq!(node.exec(&trainer, "echo batch-1 > /dev/shm/b").0, 0);
    let (code, out) = node.exec(&loader, "cat /dev/shm/b");
    assert_eq!((code, out.as_str()), (0, "batch-1\n"));
    assert_eq!(node.host(&format!("cat {host_path}/b")), "batch-1\n");
    // The size holds.
    let (code, out) = node.exec(&loader, "dd if=/dev/zero of=/dev/shm/big bs=1M count=16");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");

    // A container's end leaves the pod's /dev/shm; the pod's end takes it.
    node.remove_container(&trainer);
    assert!(node.sandbox.mount_options(host_path).is_some());
    node.remove_container(&loader);
    node.remove_pod(&pod);
    node.sandbox.assert_no_trace(host_path);

    // A pod without the annotation keeps containerd's own 64 MiB /dev/shm.
    let plain = node.run_pod("team-a", "plain", &[]);
    let container = node.run_container(&plain, "app", 0);
    let (code, out) = node.exec(&container, "df -k /dev/shm | tail -1");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.split_whitespace().nth(1), Some("65536"), "{out}");
    node.remove_container(&container);
    node.remove_pod(&plain);
}

/// `io.hostchan.on-restart=clear` on pod-lifetime channels (and the pod's /dev/shm): a container
/// created again in the pod under a name the channel has served finds it empty; another
/// container's first start does not empty it (kubernetes/kubernetes#128339).
#[test]
fn on_restart_clear_gives_a_restarted_container_empty_channels() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/cache2";
    let shm = "/run/hostchan/team-a/uid-team-a-cache2/shm";
    let pod = node.run_pod(
        "team-a",
        "cache2",
        &[
            (
                "io.hostchan.channel",
                "/run/hostchan/team-a/cache2:/cache:rw:4M",
            ),
            ("io.hostchan.lifetime", "pod"),
            ("io.hostchan.shm-size", "4M"),
            ("io.hostchan.on-restart", "clear"),
        ],
    );
    let first = node.run_container(&pod, "app", 0);
    assert_eq!(
        node.exec(
            &first,
            "echo old > /cache/f && mkdir /cache/d && echo seg > /dev/shm/s"
        )
        .0,
        0
    );
    // Another container's first start: the contents stay.
    let side = node.run_container(&pod, "side", 0);
    let (code, out) = node.exec(&side, "cat /cache/f /dev/shm/s");
    assert_eq!((code, out.as_str()), (0, "old\nseg\n"));
    node.remove_container(&side);

    // The kubelet's restart of app: empty, both the channel and /dev/shm.
    node.remove_container(&first);
    assert_eq!(node.host(&format!("cat {host_path}/f")), "old\n");
    let second = node.run_container(&pod, "app", 1);
    let (code, out) = node.exec(&second, "ls -A /cache /dev/shm");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "/cache:\n\n/dev/shm:\n", "{out}");
    assert_eq!(
        node.host(&format!("ls -A {host_path} {shm}")),
        format!("{host_path}:\n\n{shm}:\n")
    );
    node.remove_container(&second);
    node.remove_pod(&pod);
    node.sandbox.assert_no_trace(host_path);
    node.sandbox.assert_no_trace(shm);

    // Without it, a restart keeps what was there (the pod lifetime's promise).
    let kept = node.run_pod("team-a", "kept", &[("io.hostchan.shm-size", "4M")]);
    let first = node.run_container(&kept, "app", 0);
    assert_eq!(node.exec(&first, "echo seg > /dev/shm/s").0, 0);
    node.remove_container(&first);
    let second = node.run_container(&kept, "app", 1);
    let (code, out) = node.exec(&second, "cat /dev/shm/s");
    assert_eq!((code, out.as_str()), (0, "seg\n"));
    node.remove_container(&second);
    node.remove_pod(&kept);
}

/// The plugin serves its metrics and health on a unix socket and writes them for node_exporter's
/// textfile collector, as an operator turns them on (a drop-in over the shipped unit); they
/// pass `promtool check metrics` while pods come and go and say what happened, and `/healthz`
/// is 200 only while the plugin serves the runtime.
#[test]
fn the_plugin_serves_metrics_and_health_while_pods_come_and_go() {
    let node = Node::without_plugin();
    let socket = "/run/hostchan-metrics.sock";
    let textfile = "/run/node-exporter/hostchan.prom";
    node.host("mkdir -p /run/node-exporter");
    // Beside the shipped unit, in the directory the sandbox's systemd loads it from.
    let drop_in = node.units.path("hostchan-nri.service.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("metrics.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={HOSTCHAN} nri --socket {NRI_SOCKET} --metrics-listen unix:{socket} --metrics-textfile {textfile}\n"
        ),
    )
    .unwrap();
    node.sandbox.run(&["systemctl", "daemon-reload"]).ok();
    node.start_plugin();
    let get = |path: &str| {
        node.sandbox
            .run(&[
                "curl",
                "-s",
                "-o",
                "/run/scraped",
                "-w",
                "%{http_code}",
                "--unix-socket",
                socket,
                &format!("http://localhost{path}"),
            ])
            .stdout
    };
    assert_eq!(
        get("/healthz"),
        "200",
        "{}\n{}",
        node.host("systemctl cat hostchan-nri.service"),
        node.plugin_journal()
    );
    assert_eq!(node.host(&format!("stat -c %a {socket}")), "600\n");

    let pod = node.run_pod(
        "team-a",
        "scraped",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/scraped/{container}:/data:rw:2M",
        )],
    );
    let container = node.run_container(&pod, "app", 0);
    assert_eq!(
        node.exec(&container, "dd if=/dev/zero of=/data/f bs=1k count=512")
            .0,
        0
    );
    let bad = node.run_pod(
        "team-a",
        "bad",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/bad:/data:rw:lots",
        )],
    );
    assert!(node.create_container(&bad, "app", 0).is_err());

    assert_eq!(get("/metrics"), "200");
    let scraped = node.host("cat /run/scraped");
    let checked = node.sandbox.sh("promtool check metrics < /run/scraped");
    assert_eq!(checked.code, 0, "{checked:#?}\n{scraped}");
    for line in [
        "hostchan_nri_serving 1",
        "hostchan_nri_request_timeout_seconds 2",
        "hostchan_channels{state=\"active\",lifetime=\"container\"} 1",
        "hostchan_nri_create_container_seconds_count 2",
        "hostchan_nri_refusals_total{reason=\"invalid\"} 1",
        "hostchan_nri_orphans_removed_total 0",
        "hostchan_dbus_errors_total 0",
    ] {
        assert!(
            scraped.lines().any(|l| l == line),
            "{line} not in:\n{scraped}"
        );
    }
    let used = scraped
        .lines()
        .find(|l| l.starts_with("hostchan_channel_used_bytes{") && l.contains("/scraped/app"))
        .unwrap_or_else(|| panic!("no used bytes:\n{scraped}"));
    assert!(used.ends_with(" 524288"), "{used}");

    // The textfile, written at start and every 15 s, is what node_exporter reads.
    node.sandbox.wait_for(
        || {
            node.host(&format!("cat {textfile} 2>/dev/null"))
                .contains("hostchan_nri_serving 1")
        },
        "the textfile",
    );
    let checked = node
        .sandbox
        .sh(&format!("promtool check metrics < {textfile}"));
    assert_eq!(checked.code, 0, "{checked:#?}");

    // An orphan: a container removed while the plugin was down, its channel removed when the
    // plugin is back and synchronizes (the counters start again with the new process).
    let orphan = node.create_container(&pod, "orphan", 0).unwrap();
    let orphan_path = "/run/hostchan/team-a/scraped/orphan";
    node.sandbox.wait_for(
        || node.sandbox.mount_options(orphan_path).is_some(),
        "the orphan's channel to be mounted",
    );
    node.stop_plugin();
    node.remove_created_container(&orphan);
    node.start_plugin();
    assert_eq!(node.sandbox.mount_options(orphan_path), None);
    assert_eq!(get("/metrics"), "200");
    let scraped = node.host("cat /run/scraped");
    assert!(
        scraped
            .lines()
            .any(|l| l == "hostchan_nri_orphans_removed_total 1"),
        "{scraped}"
    );

    node.remove_container(&container);
    node.remove_pod(&pod);
    node.remove_pod(&bad);
    node.sandbox.wait_for(
        || {
            get("/metrics");
            node.host("cat /run/scraped")
                .contains("hostchan_nri_teardown_seconds_count 1")
        },
        "the teardown in the metrics",
    );
    // Without the runtime, the plugin is not healthy.
    node.sandbox
        .run(&["systemctl", "stop", "hc-containerd"])
        .ok();
    node.sandbox
        .wait_for(|| get("/healthz") == "503", "/healthz to say 503");
    node.stop_plugin();
}

#[test]
fn a_bad_annotation_fails_the_containers_creation_and_leaves_nothing() {
    let node = Node::start();
    let pod = node.run_pod(
        "team-a",
        "bad",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/bad:/data:rw:lots",
        )],
    );
    let error = node.create_container(&pod, "app", 0).unwrap_err();
    eprintln!("CreateContainer: {}", error.message());
    assert!(
        error.message().contains("hostchan: "),
        "{}",
        error.message()
    );
    assert!(error.message().contains("lots"), "{}", error.message());
    node.sandbox.assert_no_trace("/run/hostchan/team-a/bad");

    // Another namespace's subtree is not this pod's to ask for.
    let intruder = node.run_pod(
        "team-b",
        "intruder",
        &[("io.hostchan.channel", "/run/hostchan/team-a/stolen:/data")],
    );
    let error = node.create_container(&intruder, "app", 0).unwrap_err();
    assert!(error.message().contains("team-b"), "{}", error.message());
    node.sandbox.assert_no_trace("/run/hostchan/team-a/stolen");

    // A container path over the kernel's interfaces: hostchan's own line, not the runtime's.
    let over_proc = node.run_pod(
        "team-a",
        "proc",
        &[("io.hostchan.channel", "/run/hostchan/team-a/proc:/proc/sys")],
    );
    let error = node.create_container(&over_proc, "app", 0).unwrap_err();
    assert!(
        error
            .message()
            .contains("hostchan: annotation io.hostchan.channel: invalid container path \"/proc/sys\": is in /proc"),
        "{}",
        error.message()
    );
    node.sandbox.assert_no_trace("/run/hostchan/team-a/proc");
    node.remove_pod(&pod);
    node.remove_pod(&intruder);
    node.remove_pod(&over_proc);
}

#[test]
fn the_plugins_restart_keeps_live_channels_and_removes_orphans() {
    let node = Node::start();
    let pod = node.run_pod(
        "team-a",
        "sync",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/sync/{id}:/data",
        )],
    );
    let live = node.run_container(&pod, "live", 0);
    let orphan = node.create_container(&pod, "orphan", 0).unwrap();
    let live_path = format!("/run/hostchan/team-a/sync/{live}");
    let orphan_path = format!("/run/hostchan/team-a/sync/{orphan}");
    // CreateContainer is answered once the mount is queued in PID 1; it follows.
    node.sandbox.wait_for(
        || node.sandbox.mount_options(&orphan_path).is_some(),
        "the orphan's channel to be mounted",
    );

    // While the plugin is down its container goes (never started: no unit of its own).
    node.stop_plugin();
    node.remove_created_container(&orphan);
    assert!(node.sandbox.mount_options(&orphan_path).is_some());

    node.start_plugin();
    assert!(
        !node.sandbox.path(&orphan_path).exists(),
        "{orphan_path} still exists"
    );
    assert_eq!(node.sandbox.mount_options(&orphan_path), None);
    let units = node.sandbox.channel_units();
    assert!(
        !units.is_empty() && units.iter().all(|unit| unit.contains(&live)),
        "{units:?}"
    );
    assert_eq!(
        node.sandbox.record_files().len(),
        1,
        "only the live channel's record"
    );
    assert!(node.sandbox.mount_options(&live_path).is_some());
    assert_eq!(node.exec(&live, "echo ok > /data/x").0, 0);

    // The live container's channel goes with it even while the plugin is down: systemd
    // takes it down with the container's unit.
    node.stop_plugin();
    node.remove_container(&live);
    node.sandbox.wait_for(
        || node.sandbox.mount_options(&live_path).is_none(),
        "the channel to go with its container",
    );
    node.sandbox.wait_for(
        || node.host(&format!("test -e {live_path} || echo gone")) == "gone\n",
        "the directory to go",
    );
    node.remove_pod(&pod);
}

#[test]
fn containerd_runs_the_shipped_cdi_spec_without_the_plugin() {
    // The shipped spec, pointing at the binary under test; CDI on, the plugin not running.
    let node = Node::without_plugin();
    let shipped = std::fs::read_to_string(common::repo().join("packaging/cdi/hostchan.json"))
        .unwrap()
        .replace("/usr/bin/hostchan", HOSTCHAN);
    std::fs::create_dir_all(node.sandbox.path("/run/cdi")).unwrap();
    std::fs::write(node.sandbox.path("/run/cdi/hostchan.json"), shipped).unwrap();

    let host_path = "/run/hostchan/team-a/cdi/data";
    let pod = node.run_pod(
        "team-a",
        "cdi",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}/data:/data:rw:1M",
        )],
    );
    // A container without the device gets nothing: the annotations alone do not run the hook.
    let plain = node.run_container(&pod, "plain", 0);
    assert_eq!(node.sandbox.mount_options(host_path), None);
    node.remove_container(&plain);

    let container = node
        .create_container_with(
            &pod,
            "app",
            0,
            &[("cdi.k8s.io/hostchan", "hostchan.io/channel=hook")],
        )
        .expect("CreateContainer with the CDI device");
    node.start_container(&container);
    let options = node
        .sandbox
        .mount_options(host_path)
        .expect("the hook made the channel");
    assert!(options.contains("size=1024k"), "{options}");
    assert_eq!(
        node.sandbox.property(
            &hostchan::mount_unit_name(std::path::Path::new(host_path)),
            "BindsTo"
        ),
        format!("cri-containerd-{container}.scope")
    );
    node.host(&format!("echo from-host > {host_path}/h"));
    let (code, out) = node.exec(&container, "cat /data/h && echo from-pod > /data/p");
    assert_eq!((code, out.as_str()), (0, "from-host\n"));
    assert_eq!(node.host(&format!("cat {host_path}/p")), "from-pod\n");

    node.remove_container(&container);
    node.sandbox.wait_for(
        || node.host(&format!("test -e {host_path} || echo gone")) == "gone\n",
        "the channel to go with the container",
    );
    node.sandbox.assert_no_trace(host_path);
    node.remove_pod(&pod);
}

#[test]
fn the_plugin_reconnects_when_containerd_restarts() {
    let node = Node::start();
    let pod = node.run_pod(
        "team-a",
        "again",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}/{container}:/data",
        )],
    );
    let before = node.run_container(&pod, "before", 0);
    let synchronized = node.synchronizations();
    node.sandbox
        .run(&["systemctl", "restart", "hc-containerd"])
        .ok();
    node.sandbox.wait_for(
        || node.synchronizations() > synchronized,
        "the plugin to reconnect and synchronize",
    );
    node.sandbox
        .wait_for(|| node.answers(), "containerd's CRI to answer again");
    // The running container kept its channel across the restart, and a new pod gets its own
    // from the reconnected plugin.
    assert!(node
        .sandbox
        .mount_options("/run/hostchan/team-a/again/before")
        .is_some());
    assert_eq!(node.exec(&before, "echo kept > /data/f").0, 0);
    assert_eq!(
        node.host("cat /run/hostchan/team-a/again/before/f"),
        "kept\n"
    );
    let later = node.run_pod(
        "team-a",
        "later",
        &[("io.hostchan.channel", "/run/hostchan/team-a/later:/data")],
    );
    let after = node.run_container(&later, "after", 0);
    let (code, out) = node.exec(&after, "grep ' /data ' /proc/mounts");
    assert_eq!(code, 0, "{out}");
    assert!(node
        .sandbox
        .mount_options("/run/hostchan/team-a/later")
        .is_some());
    node.remove_pod(&later);
    node.remove_pod(&pod);
    node.sandbox.wait_for(
        || node.sandbox.channel_units().is_empty(),
        "the channels to go with the pod",
    );
}

/// Issue 26: PID 1 stalled for 3 s while a pod's container is created. The plugin answers
/// within its deadline (three quarters of containerd's 2 s request timeout), so containerd
/// never drops it and goes on without it: the container's creation fails with hostchan's line
/// (or, if systemd came back in time, the container has its channel). It never runs without
/// its channel; what was made late is taken back; the next pod gets its channel.
#[test]
fn a_stalled_systemd_never_lets_a_container_run_without_its_channel() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/stall/data";
    let pod = node.run_pod(
        "team-a",
        "stall",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}/data:/data:rw:1M",
        )],
    );
    node.sandbox.freeze();
    let thaw = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(3));
            node.sandbox.thaw();
        });
        let started = std::time::Instant::now();
        let created = node.create_container(&pod, "app", 0);
        (created, started.elapsed())
    });
    let (created, took) = thaw;
    match created {
        Err(error) => {
            eprintln!("CreateContainer after {took:?}: {}", error.message());
            assert!(
                error
                    .message()
                    .contains("hostchan: systemd did not answer within 1.5 s"),
                "{}",
                error.message()
            );
            // What the late create made is taken back once systemd answers.
            node.sandbox.wait_for(
                || {
                    node.sandbox.mount_options(host_path).is_none()
                        && node.sandbox.record_files().is_empty()
                },
                "the late channel to be taken back",
            );
            node.sandbox.wait_for_no_jobs();
            node.sandbox.assert_no_trace(host_path);
        }
        Ok(container) => {
            node.start_container(&container);
            let (code, out) = node.exec(&container, "grep ' /data ' /proc/mounts");
            assert_eq!(code, 0, "the container runs without its channel: {out}");
            node.remove_container(&container);
        }
    }
    // The plugin is still consulted: the next pod gets its channel.
    let next = node.run_pod(
        "team-a",
        "after",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/after:/data:rw:1M",
        )],
    );
    let container = node.run_container(&next, "app", 0);
    let (code, out) = node.exec(&container, "grep ' /data ' /proc/mounts");
    assert_eq!(code, 0, "{out}");
    node.remove_container(&container);
    node.remove_pod(&next);
    node.remove_pod(&pod);
}

/// Issue 26: a pod whose teardown is slow (PID 1 stalled while its container stops) never gets
/// the plugin dropped: the plugin answers StopContainer at once and finishes the teardown when
/// systemd answers, and a pod asking for another namespace's path right after is still refused.
#[test]
fn a_slow_teardown_never_gets_the_plugin_dropped() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/slow/data";
    let pod = node.run_pod(
        "team-a",
        "slow",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/slow/data:/data:rw:1M",
        )],
    );
    let container = node.run_container(&pod, "app", 0);
    let syncs = node.synchronizations();
    node.sandbox.freeze();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(3));
            node.sandbox.thaw();
        });
        // containerd's own stop needs systemd too; only the plugin's part must not stall it.
        let _ = node.stop_container_quietly(&container);
    });
    let intruder = node.run_pod(
        "team-b",
        "intruder",
        &[("io.hostchan.channel", "/run/hostchan/team-a/stolen:/data")],
    );
    let error = node.create_container(&intruder, "app", 0).unwrap_err();
    assert!(
        error.message().contains("hostchan: "),
        "{}",
        error.message()
    );
    assert!(error.message().contains("team-b"), "{}", error.message());
    node.sandbox.assert_no_trace("/run/hostchan/team-a/stolen");
    assert_eq!(
        node.synchronizations(),
        syncs,
        "the plugin was dropped and registered again"
    );
    node.remove_container(&container);
    node.sandbox.wait_for(
        || node.sandbox.mount_options(host_path).is_none(),
        "the slow teardown to finish",
    );
    node.remove_pod(&intruder);
    node.remove_pod(&pod);
}

/// Issue 26: the plugin killed while containerd waits for its CreateContainer. What the README
/// says happens: containerd goes on without it, as while it is down, so the container is
/// created without its channel; systemd restarts the plugin, which registers and synchronizes
/// within containerd's registration timeout (5 s), names in its journal the container without
/// the channel it asked for, and refuses that container's start. Whatever the killed plugin had started goes with the
/// pod, and the next pod gets its channel.
#[test]
fn the_plugin_killed_during_a_request_is_back_within_the_registration_timeout() {
    let node = Node::start();
    // A container with its channel, which the plugin must not report when it is back.
    let kept = node.run_pod(
        "team-a",
        "kept",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/kept:/data:rw:1M",
        )],
    );
    let kept_container = node.run_container(&kept, "app", 0);
    let host_path = "/run/hostchan/team-a/killed/data";
    let pod = node.run_pod(
        "team-a",
        "killed",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/killed/data:/data:rw:1M",
        )],
    );
    let plugin = node.sandbox.property("hostchan-nri.service", "MainPID");
    let syncs = node.synchronizations();
    // PID 1 stalled, so that the plugin is surely inside CreateContainer when it is killed.
    node.sandbox.freeze();
    let (created, killed) = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(700));
            node.sandbox.run(&["kill", "-KILL", &plugin]).ok();
            let killed = std::time::Instant::now();
            node.sandbox.thaw();
            killed
        });
        let created = node.create_container(&pod, "app", 0);
        (created, killer.join().expect("the killer thread"))
    });
    node.sandbox.wait_for(
        || node.synchronizations() > syncs,
        "the plugin to come back and synchronize",
    );
    let back = killed.elapsed();
    eprintln!("the plugin was back and synchronized {back:?} after it was killed");
    assert!(
        back < std::time::Duration::from_secs(5),
        "back after {back:?}, past containerd's registration timeout"
    );
    assert_eq!(
        node.sandbox.property("hostchan-nri.service", "NRestarts"),
        "1"
    );
    assert_eq!(node.sandbox.unit_state("hostchan-nri.service"), "active");
    match created {
        Ok(container) => {
            // containerd went on without the plugin: the container has no channel, so the
            // plugin, back, refuses its start, and names it in its journal.
            let refused = node.start_container_quietly(&container).unwrap_err();
            assert!(
                refused.message().contains(
                    "hostchan: it was created without its channel at /data (the plugin was not serving)"
                ),
                "{}",
                refused.message()
            );
            node.sandbox.wait_for(
                || {
                    node.plugin_journal().contains(
                        "checked the channels of 2 live containers that asked for them: 1 without",
                    )
                },
                "the plugin to check the containers' channels",
            );
            let journal = node.plugin_journal();
            assert!(
                journal.contains(&format!(
                    "container team-a/killed/app ({container}) is without its channel at /data: it was created while the plugin was not serving"
                )),
                "{journal}"
            );
            node.remove_container(&container);
        }
        Err(error) => eprintln!("CreateContainer failed: {}", error.message()),
    }
    let journal = node.plugin_journal();
    assert!(
        !journal.contains(&format!("({kept_container}) is without")),
        "a container with its channel is reported: {journal}"
    );
    node.remove_pod(&kept);
    node.remove_pod(&pod);
    node.sandbox.wait_for_no_jobs();
    node.sandbox.assert_no_trace(host_path);

    let next = node.run_pod(
        "team-a",
        "next",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/next:/data:rw:1M",
        )],
    );
    let container = node.run_container(&next, "app", 0);
    let (code, out) = node.exec(&container, "grep ' /data ' /proc/mounts");
    assert_eq!(code, 0, "{out}");
    node.remove_pod(&next);
}

/// Trips PID 1's mount-event rate limit (systemd's default burst: 5 passes over the mount table
/// a second), with changes far enough apart that each is a pass of its own: PID 1's mount jobs
/// then wait for the window's end, over half a second later.
fn make_pid1_rate_limited(node: &Node) {
    node.host(
        "for i in 1 2 3 4 5 6 7; do mkdir -p /run/hot$i && mount -t tmpfs tmpfs /run/hot$i && sleep 0.02 && umount /run/hot$i && sleep 0.02; done",
    );
}

/// Issue 27: with PID 1's mount rate limit hot, CreateContainer is answered once the channel's
/// mount is queued (not after PID 1's window), the runtime binds the directory, and the tmpfs
/// reaches the container by propagation; the start waits until the container sees it.
#[test]
fn a_channel_queued_behind_pid1s_rate_limit_reaches_the_container_before_it_starts() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/hot/data";
    let pod = node.run_pod(
        "team-a",
        "hot",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/hot/data:/data:rw:1M",
        )],
    );
    make_pid1_rate_limited(&node);
    // How much sooner the answer comes is the benchmarks' to show (section 8); here, that the
    // answer came at the queue, and that the container then has its channel.
    let container = node.create_container(&pod, "app", 0).unwrap();
    node.start_container(&container);
    node.sandbox.wait_for(
        || {
            node.plugin_journal()
                .contains("container team-a/hot/app: 1 channel queued in")
        },
        "the plugin's line for a channel answered at the queue",
    );
    // Inside: the channel's tmpfs with its size, on top of the directory bound at creation.
    let (code, out) = node.exec(&container, "grep ' /data ' /proc/mounts | tail -1");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tmpfs /data tmpfs rw,") && out.contains("size=1024k"),
        "{out}"
    );
    node.host(&format!("echo from-host > {host_path}/h"));
    let (code, out) = node.exec(&container, "cat /data/h && echo from-pod > /data/p");
    assert_eq!(code, 0, "{out}");
    assert_eq!(node.host(&format!("cat {host_path}/p")), "from-pod\n");
    let (code, out) = node.exec(&container, "dd if=/dev/zero of=/data/big bs=64k count=32");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    node.remove_container(&container);
    node.sandbox.wait_for_no_jobs();
    node.sandbox.assert_no_trace(host_path);
    node.remove_pod(&pod);
}

/// Issue 27: on a node where the host path's parent mount is not shared, a mount made after the
/// runtime's bind would not reach the container (and containerd refuses an `rslave` bind from
/// it), so CreateContainer is answered only once the tmpfs is mounted, as before: the container
/// has its channel, later.
#[test]
fn under_a_private_parent_mount_the_channel_is_answered_once_mounted() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/private/data";
    node.host("mkdir -p /run/hostchan && mount --bind /run/hostchan /run/hostchan && mount --make-private /run/hostchan");
    let pod = node.run_pod(
        "team-a",
        "private",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/private/data:/data:rw:1M",
        )],
    );
    make_pid1_rate_limited(&node);
    let container = node.create_container(&pod, "app", 0).unwrap();
    assert!(
        node.sandbox.mount_options(host_path).is_some(),
        "answered before the tmpfs was mounted"
    );
    node.start_container(&container);
    let (code, out) = node.exec(&container, "grep ' /data ' /proc/mounts");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("size=1024k"), "{out}");
    assert!(
        !node
            .plugin_journal()
            .contains("team-a/private/app: 1 channel queued"),
        "{}",
        node.plugin_journal()
    );
    node.remove_container(&container);
    node.sandbox.wait_for_no_jobs();
    node.sandbox.assert_no_trace(host_path);
    node.remove_pod(&pod);
}
