//! Section 8: the NRI plugin in front of a real containerd (tests/sandbox/containerd.sh's,
//! started in this phase's sandbox). Each CreateContainer's time as the plugin measures it
//! (its journal line) and as the CRI client sees it, for one pod at a time and for many pods
//! whose containers are asked for at once; beside it, the same without a channel; and the
//! plugin's resident memory idle and after the storm.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cri::{Cri, Pod};
use crate::{burst_label, count_records, ms, ratio, wait_until, Rows};

const SECTION: usize = 8;
const NRI_SOCKET: &str = "/run/hc-containerd/nri.sock";

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plugin's own time for each container of pods in `namespace` it gave a channel (its
/// journal lines `container NAMESPACE/POD/CONTAINER: 1 channel in N ms`, or `1 channel queued
/// in N ms; ...` when answered before PID 1 mounted it) or refused (`container
/// NAMESPACE/POD/CONTAINER: refused in N ms: ...`).
fn plugin_times(namespace: &str) -> Vec<Duration> {
    let prefix = format!("container {namespace}/");
    sh("journalctl --no-pager -o cat -u hostchan-nri.service")
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?.split_once(": ")?.1;
            let millis = match rest.split_once(" ms: ") {
                Some((refused, _)) => refused.strip_prefix("refused in ")?,
                None => rest.rsplit_once(" in ")?.1.split_once(" ms")?.0,
            };
            Some(Duration::from_secs_f64(
                millis.parse::<f64>().ok()? / 1000.0,
            ))
        })
        .collect()
}

/// The parts of each CreateContainer of `namespace`'s pods the plugin gave a channel, from
/// its journal line `... in T ms (systemd S ms, waiting for a CPU C ms, for the record lock L
/// ms)`.
struct Parts {
    /// T less S: its own part.
    own: Vec<Duration>,
    /// T less C: its time had a CPU always been free for it.
    cpu_free: Vec<Duration>,
    /// L: its wait for the records' lock.
    lock: Vec<Duration>,
    /// T less S and C: its work alone, waiting neither for PID 1 nor for a CPU (a reply's own
    /// wait for a CPU is in both, so this can come out a little low).
    work: Vec<Duration>,
}

fn plugin_parts(namespace: &str) -> Parts {
    let prefix = format!("container {namespace}/");
    let millis = |text: &str| text.parse::<f64>().ok().map(|m| m / 1000.0);
    let mut parts = Parts {
        own: Vec::new(),
        cpu_free: Vec::new(),
        lock: Vec::new(),
        work: Vec::new(),
    };
    let journal = sh("journalctl --no-pager -o cat -u hostchan-nri.service");
    for line in journal
        .lines()
        .filter(|line| line.starts_with(&prefix) && !line.contains("refused"))
    {
        let parsed = (|| {
            let (before, after) = line.split_once(" ms (systemd ")?;
            let total = millis(before.rsplit_once(" in ")?.1)?;
            let (waited, after) = after.split_once(" ms, waiting for a CPU ")?;
            let (cpu, after) = after.split_once(" ms, for the record lock ")?;
            let lock = millis(after.split_once(" ms)")?.0)?;
            Some((total, millis(waited)?, millis(cpu)?, lock))
        })();
        let Some((total, waited, cpu, lock)) = parsed else {
            continue;
        };
        parts
            .own
            .push(Duration::from_secs_f64((total - waited).max(0.0)));
        parts
            .cpu_free
            .push(Duration::from_secs_f64((total - cpu).max(0.0)));
        parts.lock.push(Duration::from_secs_f64(lock));
        parts
            .work
            .push(Duration::from_secs_f64((total - waited - cpu).max(0.0)));
    }
    parts
}

/// How long the sandbox's PID 1 has waited for a CPU in all (/proc/1/schedstat).
fn pid1_cpu_queue_time() -> Duration {
    let line = std::fs::read_to_string("/proc/1/schedstat").unwrap_or_default();
    Duration::from_nanos(
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// The plugin's resident set and its peak so far, in KiB (/proc/PID/status).
fn plugin_memory() -> (u64, u64) {
    let pid = sh("systemctl show -P MainPID hostchan-nri.service");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .expect("the plugin's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn annotations(channel: bool) -> Vec<(&'static str, &'static str)> {
    if channel {
        vec![(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}:/data:rw:1M",
        )]
    } else {
        Vec::new()
    }
}

fn remove_pods(cri: &Cri, pods: &[Pod]) {
    for pod in pods {
        cri.remove_pod(pod);
    }
    wait_until(Duration::from_secs(120), "the channels to go", || {
        count_records(Path::new("/var/lib/hostchan/channels")) == 0
    });
}

/// One pod at a time: the CRI client's CreateContainer time for each, and the time from
/// CreateContainer until StartContainer has returned.
fn one_at_a_time(
    cri: &Cri,
    namespace: &str,
    rounds: usize,
    channel: bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut times = Vec::new();
    let mut running = Vec::new();
    let mut pods = Vec::new();
    for round in 0..rounds {
        let pod = cri.run_pod(namespace, &format!("p{round}"), &annotations(channel));
        let mut at_once = cri.create_containers_at_once(std::slice::from_ref(&pod), "app");
        let (id, took) = at_once.remove(0).expect("CreateContainer");
        let started = std::time::Instant::now();
        cri.start_container(&id);
        times.push(took);
        running.push(took + started.elapsed());
        pods.push(pod);
    }
    remove_pods(cri, &pods);
    (times, running)
}

/// `n` pods made first, then one container in each asked for at once; and how long PID 1 took
/// to answer a `ListUnitsByNames` (the call the plugin makes most), asked every 10 ms while the
/// containers were being created.
fn storm(cri: &Cri, namespace: &str, n: usize, channel: bool) -> (Vec<Duration>, Vec<Duration>) {
    let pods: Vec<Pod> = (0..n)
        .map(|i| cri.run_pod(namespace, &format!("p{i}"), &annotations(channel)))
        .collect();
    let (times, answers) = pid1_answers_while(|| {
        cri.create_containers_at_once(&pods, "app")
            .into_iter()
            .map(|result| result.expect("CreateContainer").1)
            .collect()
    });
    remove_pods(cri, &pods);
    (times, answers)
}

/// Runs `work`, asking PID 1 for one unit's state every 10 ms meanwhile (seldom enough not to
/// slow PID 1 for the plugin much): what it returns, and
/// how long each answer took.
fn pid1_answers_while<T>(work: impl FnOnce() -> T) -> (T, Vec<Duration>) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            let bus = zbus::blocking::Connection::system().expect("the system bus");
            let mut answers = Vec::new();
            // At least once, should the work end before this thread begins.
            loop {
                let asked = std::time::Instant::now();
                let _ = bus.call_method(
                    Some("org.freedesktop.systemd1"),
                    "/org/freedesktop/systemd1",
                    Some("org.freedesktop.systemd1.Manager"),
                    "ListUnitsByNames",
                    &(&["init.scope"][..],),
                );
                answers.push(asked.elapsed());
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return answers;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        // Set also when `work` panics: the scope waits for the asking thread before it passes
        // the panic on, and a bench that failed once hung there, its sandbox left running.
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let result = {
            let _done = Done(&done);
            work()
        };
        (result, asking.join().expect("the asking thread"))
    })
}

/// PID 1's own window for one pod start: right after each pod's RunPodSandbox, where the
/// plugin's CreateContainer would come, one plain `systemd-mount` of the same tmpfs. The
/// floor under the plugin's time for one pod.
fn floor_one_at_a_time(cri: &Cri, rounds: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for round in 0..rounds {
        let path = format!("/run/hostchan/floor/p{round}");
        std::fs::create_dir_all(&path).expect("the floor's directory");
        let pod = cri.run_pod("floor", &format!("p{round}"), &[]);
        let started = std::time::Instant::now();
        sh(&format!(
            "systemd-mount --quiet --type=tmpfs --options=size=1M,mode=1777,nosuid,nodev tmpfs {path}"
        ));
        times.push(started.elapsed());
        sh(&format!("systemd-umount --quiet {path} && rmdir {path}"));
        cri.remove_pod(&pod);
    }
    times
}

/// `n` pods started at once as the kubelet starts them (each sandbox, then its container
/// created and started right after): the CRI client's CreateContainer time for each, and the
/// time from CreateContainer until StartContainer has returned (the container runs), and how
/// many CreateContainers were refused (the plugin fails closed when PID 1 does not answer
/// within its deadline; the kubelet would ask again).
fn kubelet_storm(
    cri: &Cri,
    namespace: &str,
    n: usize,
    channel: bool,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let started = cri.pods_started_at_once(namespace, n, &annotations(channel));
    let mut refused = 0;
    let (mut creates, mut runs) = (Vec::new(), Vec::new());
    for (_, created) in &started {
        match created {
            Ok(created) => {
                creates.push(created.1);
                runs.push(created.2);
            }
            Err(e) => {
                eprintln!("{namespace}: CreateContainer refused: {e}");
                refused += 1;
            }
        }
    }
    let pods: Vec<Pod> = started.into_iter().map(|(pod, _)| pod).collect();
    remove_pods(cri, &pods);
    (creates, runs, refused)
}

/// CreateContainer for a pod with a channel while PID 1 is stopped for 3 s (bench/run's
/// helper stops it when BENCH_STALL appears): how long containerd waits, and whether the
/// container was refused (the plugin's deadline) or got its channel.
fn stalled_creates(cri: &Cri, rounds: usize) -> Vec<(bool, Duration)> {
    let stall = std::env::var("BENCH_STALL").expect("BENCH_STALL, set by bench/run");
    let mut results = Vec::new();
    for round in 0..rounds {
        let pod = cri.run_pod("stalled", &format!("p{round}"), &annotations(true));
        std::fs::write(&stall, "").expect("ask for PID 1 to be stalled");
        wait_until(Duration::from_secs(10), "PID 1 to be stopped", || {
            !Path::new(&stall).exists()
        });
        let started = std::time::Instant::now();
        let created = cri.create_container(&pod, "app", 0);
        let took = started.elapsed();
        let refused = match created {
            Ok(_) => false,
            Err(error) => {
                assert!(
                    error
                        .message()
                        .contains("hostchan: systemd did not answer within"),
                    "refused by something else: {}",
                    error.message()
                );
                true
            }
        };
        results.push((refused, took));
        // PID 1 back (the helper's 3 s), then the pod and whatever was taken back go.
        wait_until(Duration::from_secs(30), "PID 1 to answer again", || {
            Command::new("systemctl")
                .arg("is-system-running")
                .output()
                .is_ok_and(|out| !out.stdout.is_empty())
        });
        remove_pods(cri, &[pod]);
    }
    results
}

/// The rows of `call` with a channel and without, and their ratio.
fn side_by_side(call: &str, ratio_of: &str, what: &str, with: &[Duration], without: &[Duration]) {
    let w = Rows::timing(
        SECTION,
        &format!("{call} with a channel, {what}"),
        with,
        String::new(),
    );
    let wo = Rows::timing(
        SECTION,
        &format!("{call} without, {what}"),
        without,
        "containerd alone (the plugin answers with nothing)".into(),
    );
    Rows::line(
        SECTION,
        &format!("  with / without, {ratio_of}{what}"),
        format!("{:.2}x", ratio(w.median, wo.median)),
        format!(
            "{} added at the median",
            ms(w.median.saturating_sub(wo.median))
        ),
    );
}

pub fn run(hostchan: &str, containerd_dir: &str, tiny: bool) {
    let (rounds, n) = if tiny { (3, 4) } else { (20, 64) };
    sh(&format!(
        "{repo}/tests/sandbox/containerd.sh start {containerd_dir} >/dev/null",
        repo = env!("CARGO_MANIFEST_DIR")
    ));
    sh(&format!(
        "systemd-run --quiet --unit=hostchan-nri {hostchan} nri --socket {NRI_SOCKET}"
    ));
    wait_until(Duration::from_secs(30), "the plugin to synchronize", || {
        sh("journalctl --no-pager -o cat -u hostchan-nri.service").contains("synchronized with")
    });
    let cri = Cri::connect("/run/hc-containerd/containerd.sock".into());
    // A first pod and container warm containerd up (image, snapshotter); not counted.
    let _ = one_at_a_time(&cri, "warm", 1, true);
    let (idle_rss, _) = plugin_memory();

    let (without_one, without_one_running) = one_at_a_time(&cri, "plain", rounds, false);
    let (with_one, with_one_running) = one_at_a_time(&cri, "bench", rounds, true);
    let plugin_one = plugin_times("bench");
    let ((), pid1_idle) = pid1_answers_while(|| std::thread::sleep(Duration::from_millis(500)));
    let (without_storm, _) = storm(&cri, "plainstorm", n, false);
    let pid1_queued_before = pid1_cpu_queue_time();
    let (with_storm, pid1_busy) = storm(&cri, "storm", n, true);
    let pid1_queued = pid1_cpu_queue_time().saturating_sub(pid1_queued_before);
    let plugin_storm = plugin_times("storm");
    let floor_one = floor_one_at_a_time(&cri, rounds);
    let (without_kubelet, without_kubelet_running, _) =
        kubelet_storm(&cri, "plainkubelet", n, false);
    let (with_kubelet, with_kubelet_running, kubelet_refused) =
        kubelet_storm(&cri, "kubelet", n, true);
    let plugin_kubelet = plugin_times("kubelet");
    let stalled = stalled_creates(&cri, if tiny { 1 } else { 3 });
    let (after_rss, peak_rss) = plugin_memory();
    let burst = format!("burst {}", burst_label());
    let slowest = plugin_storm.iter().max().copied().unwrap_or_default();

    let plugin1 = Rows::timing(
        SECTION,
        &format!("plugin, CreateContainer with a channel, 1 pod, {burst}"),
        &plugin_one,
        "the plugin's own time (its journal line)".into(),
    );
    let floor = Rows::timing(
        SECTION,
        &format!("systemd-mount right after RunPodSandbox, 1 pod, {burst}"),
        &floor_one,
        "PID 1's own window: the floor for one pod".into(),
    );
    Rows::line(
        SECTION,
        &format!("  plugin, 1 pod / the floor, {burst}"),
        format!("{:.2}x", ratio(plugin1.median, floor.median)),
        format!(
            "{} over the floor at the median",
            ms(plugin1.median.saturating_sub(floor.median))
        ),
    );
    let Parts {
        own: own_one,
        cpu_free: cpu_free_one,
        lock: lock_one,
        work: work_one,
    } = plugin_parts("bench");
    let Parts {
        own: own_storm,
        cpu_free: cpu_free_storm,
        lock: lock_storm,
        work: work_storm,
    } = plugin_parts("storm");
    let own1 = Rows::timing(
        SECTION,
        &format!("plugin's own part (less its wait for systemd), 1 pod, {burst}"),
        &own_one,
        "its time less the D-Bus calls to PID 1".into(),
    );
    let ownn = Rows::timing(
        SECTION,
        &format!("plugin's own part (less its wait for systemd), {n} pods at once, {burst}"),
        &own_storm,
        String::new(),
    );
    Rows::line(
        SECTION,
        &format!("  plugin's own part: {n} at once p95 / 1 pod median"),
        format!("{:.2}x", ratio(ownn.p95, own1.median)),
        "the rest is PID 1 answering later while it mounts other pods' channels".into(),
    );
    let cpu_free1 = Rows::timing(
        SECTION,
        &format!("plugin less its wait for a CPU, 1 pod, {burst}"),
        &cpu_free_one,
        "its time less its worker's run-queue delay (schedstat)".into(),
    );
    let cpu_freen = Rows::timing(
        SECTION,
        &format!("plugin less its wait for a CPU, {n} pods at once, {burst}"),
        &cpu_free_storm,
        format!(
            "PID 1 waited {} for a CPU over these creates",
            ms(pid1_queued)
        ),
    );
    Rows::line(
        SECTION,
        &format!("  plugin less its wait for a CPU: {n} at once p95 / 1 pod median"),
        format!("{:.2}x", ratio(cpu_freen.p95, cpu_free1.median)),
        "what is left once the wait for a CPU is taken out".into(),
    );
    let work1 = Rows::timing(
        SECTION,
        &format!("plugin's work alone (less both waits), 1 pod, {burst}"),
        &work_one,
        "its time less its waits for PID 1 and for a CPU".into(),
    );
    let workn = Rows::timing(
        SECTION,
        &format!("plugin's work alone (less both waits), {n} pods at once, {burst}"),
        &work_storm,
        String::new(),
    );
    Rows::line(
        SECTION,
        &format!("  plugin's work alone: {n} at once p95 / 1 pod median"),
        format!("{:.2}x", ratio(workn.p95, work1.median)),
        "what hostchan's own code adds under the storm".into(),
    );
    Rows::timing(
        SECTION,
        &format!("plugin's wait for the record lock, 1 pod, {burst}"),
        &lock_one,
        String::new(),
    );
    Rows::timing(
        SECTION,
        &format!("plugin's wait for the record lock, {n} pods at once, {burst}"),
        &lock_storm,
        "held by earlier pods' work finishing after their answer".into(),
    );
    let idle = Rows::timing(
        SECTION,
        &format!("PID 1's answer to one ListUnitsByNames, idle, {burst}"),
        &pid1_idle,
        "asked every 10 ms".into(),
    );
    let busy = Rows::timing(
        SECTION,
        &format!("PID 1's answer to one ListUnitsByNames, during the {n} pods at once, {burst}"),
        &pid1_busy,
        "the same, while the plugin's storm above ran".into(),
    );
    Rows::line(
        SECTION,
        &format!("  PID 1's answer: during the {n} pods p95 / idle median"),
        format!("{:.2}x", ratio(busy.p95, idle.median)),
        format!(
            "{} added at p95: what each of the plugin's calls to PID 1 can wait",
            ms(busy.p95.saturating_sub(idle.median))
        ),
    );
    let pluginn = Rows::timing(
        SECTION,
        &format!("plugin, CreateContainer with a channel, {n} pods at once, {burst}"),
        &plugin_storm,
        format!("slowest {} (NRI's request timeout: 2 s)", ms(slowest)),
    );
    Rows::line(
        SECTION,
        &format!("  plugin: {n} at once / 1"),
        format!(
            "{:.2}x median, {:.2}x p95",
            ratio(pluginn.median, plugin1.median),
            ratio(pluginn.p95, plugin1.p95)
        ),
        String::new(),
    );
    let plugink = Rows::timing(
        SECTION,
        &format!(
            "plugin, CreateContainer with a channel, {n} pods started as the kubelet does, {burst}"
        ),
        &plugin_kubelet,
        format!("each sandbox, then its container right after; {kubelet_refused} refused"),
    );
    Rows::line(
        SECTION,
        &format!("  plugin: {n} as the kubelet does / 1"),
        format!(
            "{:.2}x median, {:.2}x p95",
            ratio(plugink.median, plugin1.median),
            ratio(plugink.p95, plugin1.median)
        ),
        "p95 against the 1-pod median".into(),
    );
    for (what, with, without) in [
        (format!("1 pod, {burst}"), &with_one, &without_one),
        (
            format!("{n} pods at once, {burst}"),
            &with_storm,
            &without_storm,
        ),
        (
            format!("{n} pods started as the kubelet does, {burst}"),
            &with_kubelet,
            &without_kubelet,
        ),
    ] {
        side_by_side("CRI CreateContainer", "", &what, with, without);
    }
    for (what, with, without) in [
        (
            format!("1 pod, {burst}"),
            &with_one_running,
            &without_one_running,
        ),
        (
            format!("{n} pods started as the kubelet does, {burst}"),
            &with_kubelet_running,
            &without_kubelet_running,
        ),
    ] {
        side_by_side(
            "CRI Create+StartContainer",
            "until running, ",
            &what,
            with,
            without,
        );
    }
    let refused = stalled.iter().filter(|(refused, _)| *refused).count();
    let stalled_times: Vec<Duration> = stalled.iter().map(|(_, took)| *took).collect();
    let plugin_stalled = plugin_times("stalled");
    let slowest_stalled = plugin_stalled.iter().max().copied().unwrap_or_default();
    Rows::timing(
        SECTION,
        &format!("plugin, CreateContainer with a channel, PID 1 stalled 3 s, {burst}"),
        &plugin_stalled,
        format!(
            "{refused} of {} refused at the deadline (1.5 s), slowest {} (limit 2 s)",
            stalled.len(),
            ms(slowest_stalled)
        ),
    );
    Rows::timing(
        SECTION,
        &format!("CRI CreateContainer with a channel, PID 1 stalled 3 s, {burst}"),
        &stalled_times,
        "containerd answers once PID 1 is back".into(),
    );
    Rows::line(
        SECTION,
        &format!("plugin RSS idle / after the storm / peak, {burst}"),
        format!("{idle_rss} / {after_rss} / {peak_rss} KiB"),
        "VmRSS before and after, VmHWM".into(),
    );
}
