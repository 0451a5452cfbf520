//! The Kubernetes half of the demo (`./demo kubernetes` runs it inside the sandboxed systemd,
//! beside containerd and `hostchan nri`): a pod asks for a channel in its annotations, the
//! CRI calls a kubelet would make run it, and the channel is seen from both sides, refused to
//! another namespace, and gone with the container; and a pod gets a 1 GiB /dev/shm.

#[path = "../common/cri.rs"]
mod cri;

use std::process::Command;

use cri::Cri;

fn say(what: &str) {
    println!("\n\x1b[1m## {what}\x1b[0m");
}

/// Runs a command on the host (the sandbox), showing it and what it prints.
fn show(argv: &[&str]) {
    println!("$ {}", argv.join(" "));
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let hostchan = std::env::var("HOSTCHAN").expect("HOSTCHAN: the hostchan binary");
    let cri = Cri::connect("/run/hc-containerd/containerd.sock".into());
    let channel = (
        "io.hostchan.channel.logs/container.app",
        "/run/hostchan/{pod_namespace}/{pod_name}/logs:/logs:rw:32M",
    );

    say("A pod in namespace team-a asks for a 32M channel for its container app");
    println!("  annotations: {}: \"{}\"", channel.0, channel.1);
    let pod = cri.run_pod("team-a", "web", &[channel]);
    println!("RunPodSandbox -> {}", &pod.id[..12]);
    let app = cri.run_container(&pod, "app", 0);
    println!(
        "CreateContainer app -> {} (the plugin made the channel), StartContainer",
        &app[..12]
    );
    let sidecar = cri.run_container(&pod, "sidecar", 0);
    println!(
        "CreateContainer sidecar -> {} (no channel asked for it)",
        &sidecar[..12]
    );

    say("On the host: a transient mount unit, bound to the container's scope by hostchan-bind@");
    show(&[&hostchan, "list"]);
    show(&["findmnt", "/run/hostchan/team-a/web/logs"]);
    show(&[
        "systemctl",
        "show",
        "-p",
        "BindsTo,After",
        "run-hostchan-team\\x2da-web-logs.mount",
    ]);
    show(&[
        "systemctl",
        "list-units",
        "--no-pager",
        "--no-legend",
        "hostchan-bind@*",
    ]);

    say("Inside the container the runtime bind-mounted it at /logs; the sidecar has none");
    let (_, out) = cri.exec(
        &app,
        "grep ' /logs ' /proc/mounts; echo hello from the pod > /logs/greeting",
    );
    print!("app$ grep ' /logs ' /proc/mounts\n{out}");
    let (_, out) = cri.exec(&sidecar, "ls /logs 2>&1");
    print!("sidecar$ ls /logs\n{out}");
    show(&["cat", "/run/hostchan/team-a/web/logs/greeting"]);

    say("The size holds inside the container");
    let (_, out) = cri.exec(&app, "dd if=/dev/zero of=/logs/big bs=1M count=64 2>&1");
    print!("app$ dd if=/dev/zero of=/logs/big bs=1M count=64\n{out}");

    say("A pod asks for a 1 GiB /dev/shm, which containerd alone gives at 64 MiB, whatever asked");
    let shm = ("io.hostchan.shm-size", "1G");
    println!("  annotations: {}: \"{}\"", shm.0, shm.1);
    let trainer = cri.run_pod("team-a", "trainer", &[shm]);
    let torch = cri.run_container(&trainer, "torch", 0);
    let loader = cri.run_container(&trainer, "loader", 0);
    let (_, out) = cri.exec(&torch, "df -h /dev/shm; echo batch-1 > /dev/shm/ring");
    print!("torch$ df -h /dev/shm\n{out}");
    let (_, out) = cri.exec(&loader, "cat /dev/shm/ring");
    print!("loader$ cat /dev/shm/ring\n{out}");
    let (_, out) = cri.exec(&sidecar, "df -h /dev/shm");
    print!("(pod web, no annotation) sidecar$ df -h /dev/shm\n{out}");
    let shm_path = "/run/hostchan/team-a/uid-team-a-trainer/shm";
    show(&["findmnt", shm_path]);
    show(&["cat", &format!("{shm_path}/ring")]);
    cri.remove_container(&torch);
    cri.remove_container(&loader);
    cri.remove_pod(&trainer);
    for _ in 0..100 {
        if !std::path::Path::new(shm_path).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("(the pod removed)");
    show(&["ls", "-d", shm_path]);

    say("A pod in namespace team-b names team-a's directory: its container is not created");
    let intruder = cri.run_pod(
        "team-b",
        "intruder",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/web/stolen:/data",
        )],
    );
    match cri.create_container(&intruder, "app", 0) {
        Ok(id) => println!("unexpected: created {id}"),
        Err(status) => println!("CreateContainer -> error: {}", status.message()),
    }
    show(&["ls", "/run/hostchan/team-a/web"]);

    say("The kubelet removes the container: systemd takes the channel down with its scope");
    cri.remove_container(&app);
    for _ in 0..100 {
        if !std::path::Path::new("/run/hostchan/team-a/web/logs").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    show(&["ls", "-d", "/run/hostchan/team-a/web/logs"]);
    show(&[&hostchan, "list"]);
    show(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        "hostchan-nri.service",
    ]);

    cri.remove_pod(&pod);
    cri.remove_pod(&intruder);
}
