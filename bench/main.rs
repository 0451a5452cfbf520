//! hostchan's benchmarks. `bench/run` builds this (`--example bench`, release) and boots a fresh
//! sandboxed systemd for each phase (`bench phase NAME`), which prints rows of measurements;
//! `bench print FILE` then prints them as one table, sections in order, with the ratios of
//! measurements taken side by side in one run. It times, it never asserts a speed.
//!
//! Environment of a phase: HOSTCHAN (the binary under test), BENCH_SCALE=tiny (CI: a few
//! samples each), BENCH_BURST (the `SYSTEMD_DEFAULT_MOUNT_RATE_LIMIT_BURST` the sandbox's PID 1
//! was started with, empty for systemd's default).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount, MsFlags};

#[path = "../tests/common/cri.rs"]
mod cri;
mod nri;

struct Scale {
    cycles: usize,
    version_runs: usize,
    list_sizes: Vec<usize>,
    list_runs: usize,
    parallel_rounds: usize,
    hook_rounds: usize,
}

impl Scale {
    fn from_env() -> Scale {
        if tiny() {
            Scale {
                cycles: 3,
                version_runs: 3,
                list_sizes: vec![2, 4],
                list_runs: 2,
                parallel_rounds: 1,
                hook_rounds: 1,
            }
        } else {
            Scale {
                cycles: 50,
                version_runs: 100,
                list_sizes: vec![10, 100, 1000],
                list_runs: 20,
                parallel_rounds: 5,
                hook_rounds: 10,
            }
        }
    }
}

fn tiny() -> bool {
    std::env::var("BENCH_SCALE").as_deref() == Ok("tiny")
}

/// How one process ended, with its wall time and peak resident set.
struct Exit {
    ok: bool,
    wall: Duration,
    max_rss_kib: i64,
    stderr: String,
}

/// Spawns and reaps with wait4, which reports the child's own peak RSS.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not know about
#[allow(unsafe_code)]
fn measure(argv: &[&str]) -> Exit {
    let started = Instant::now();
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // Read to the end first: a child blocked on a full pipe would never exit.
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(reaped, pid, "wait4 failed for {argv:?}");
    Exit {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall,
        max_rss_kib: usage.ru_maxrss,
        stderr,
    }
}

#[track_caller]
fn must(argv: &[&str]) -> Exit {
    let exit = measure(argv);
    assert!(exit.ok, "{argv:?} failed: {}", exit.stderr);
    exit
}

struct Stats {
    n: usize,
    median: Duration,
    p95: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        n: sorted.len(),
        median: at(0.5),
        p95: at(0.95),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// The sections, in the order they print.
const SECTIONS: [&str; 8] = [
    "1. one channel, create + delete (tmpfs 1048576 bytes, bound to a scope, directory removed)",
    "2. process start to exit",
    "3. list and status with N live channels (list: one ListUnitsByNames call), vs systemctl list-units --type=mount",
    "4. the OCI hook of one container (runc, createRuntime): 1 channel vs 8 channels; beside it, 1 vs 8 systemd-mounts at once",
    "5. creates racing each other (one PID 1, one owner scope)",
    "6. storm: N containers starting at once, each with its own scope; every measurement on a freshly booted PID 1",
    "7. peak RSS",
    "8. Kubernetes: CreateContainer through containerd 1.7's CRI with the NRI plugin, one channel per container (the hook's own time for one channel is in 4)",
];

/// Rows of one phase, printed as tab-separated lines for `bench print`:
/// `ROW section what n median p95 note`.
struct Rows;

impl Rows {
    fn row(section: usize, what: &str, n: String, median: String, p95: String, note: String) {
        println!("ROW\t{section}\t{what}\t{n}\t{median}\t{p95}\t{note}");
    }

    fn timing(section: usize, what: &str, samples: &[Duration], note: String) -> Stats {
        let s = stats(samples);
        Rows::row(
            section,
            what,
            s.n.to_string(),
            ms(s.median),
            ms(s.p95),
            note,
        );
        s
    }

    /// Two timings and the ratio of their medians; returns the medians.
    fn compare(
        section: usize,
        a: (&str, &[Duration]),
        b: (&str, &[Duration]),
        ratio_label: &str,
    ) -> (Duration, Duration) {
        let sa = Rows::timing(section, a.0, a.1, String::new());
        let sb = Rows::timing(section, b.0, b.1, String::new());
        Rows::line(
            section,
            &format!("  {ratio_label}"),
            String::new(),
            format!(
                "{:.2}x median, {:.2}x p95",
                ratio(sa.median, sb.median),
                ratio(sa.p95, sb.p95)
            ),
        );
        (sa.median, sb.median)
    }

    fn line(section: usize, what: &str, value: String, note: String) {
        Rows::row(section, what, String::new(), value, String::new(), note);
    }
}

struct Bench {
    hostchan: String,
    scale: Scale,
}

const SIZE: &str = "1048576";
const OPTIONS: &str = "mode=1777,size=1048576,nosuid,nodev,noexec";
const OWNER: &str = "bench.scope";

/// CPU time PID 1 (the sandbox's systemd) has run so far (/proc/1/schedstat, nanoseconds).
fn pid1_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/1/schedstat").expect("/proc/1/schedstat");
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .expect("a CPU time in /proc/1/schedstat");
    Duration::from_nanos(ns)
}

fn start_scope(name: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "systemd-run --quiet --scope --unit={name} sleep infinity </dev/null >/dev/null 2>&1 &"
        ))
        .status()
        .expect("systemd-run");
    assert!(status.success());
    wait_until(Duration::from_secs(30), &format!("{name} to start"), || {
        Command::new("systemctl")
            .args(["is-active", "--quiet", name])
            .status()
            .is_ok_and(|s| s.success())
    });
}

#[track_caller]
fn wait_until(limit: Duration, what: &str, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

/// mount + umount through systemd-mount, then the rmdir it leaves to its caller.
fn systemd_mount_cycle(
    path: &str,
    times: &mut (Vec<Duration>, Vec<Duration>, Vec<Duration>),
    rss: &mut Vec<i64>,
) {
    let t = Instant::now();
    let argv = systemd_mount_argv(path, OWNER);
    let mounted = must(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let t1 = Instant::now();
    must(&["systemd-umount", "--quiet", path]);
    std::fs::remove_dir(path).expect("rmdir after systemd-umount");
    times.0.push(t1 - t);
    times.1.push(t1.elapsed());
    times.2.push(t.elapsed());
    rss.push(mounted.max_rss_kib);
}

/// The same tmpfs made and removed in-process, in a mount namespace of the thread's own (so
/// that PID 1 neither sees nor rate-limits these mounts).
fn floor_cycles(n: usize) -> Vec<Duration> {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        (0..n)
            .map(|i| {
                let path = PathBuf::from(format!("/run/bench/f/c{i}"));
                let t = Instant::now();
                std::fs::create_dir_all(&path).expect("mkdir");
                mount(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=1777,size=1048576"),
                )
                .expect("mount");
                umount(&path).expect("umount");
                std::fs::remove_dir(&path).expect("rmdir");
                t.elapsed()
            })
            .collect()
    })
    .join()
    .expect("floor thread")
}

impl Bench {
    fn hostchan_cycle(
        &self,
        path: &str,
        times: &mut (Vec<Duration>, Vec<Duration>, Vec<Duration>),
        rss: &mut Vec<i64>,
    ) {
        let spec = format!("{path}:/x:rw:{SIZE}");
        let t = Instant::now();
        let created = must(&self.hostchan(&["create", "--scope", OWNER, &spec]));
        let t1 = Instant::now();
        must(&self.hostchan(&["delete", path]));
        assert!(!Path::new(path).exists(), "hostchan left {path}");
        times.0.push(t1 - t);
        times.1.push(t1.elapsed());
        times.2.push(t.elapsed());
        rss.push(created.max_rss_kib);
    }

    fn hostchan<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut argv = vec![self.hostchan.as_str()];
        argv.extend_from_slice(args);
        argv
    }

    /// 1 (and 7): a channel's whole life, three ways. PID 1 handles at most 5 mount events a
    /// second before it delays the rest (systemd's mount-event rate limit), so each round
    /// starts a second after the previous one and holds 4 events (a create and a delete each
    /// for hostchan and systemd-mount), in alternating order: neither pays for the other's
    /// events. `back_to_back` measures hostchan without the pause, where the limit shows.
    fn create_delete(&self) {
        start_scope(OWNER);
        let mut hc = (Vec::new(), Vec::new(), Vec::new());
        let mut sm = (Vec::new(), Vec::new(), Vec::new());
        let mut rss = Vec::new();
        let mut sm_rss = Vec::new();
        for i in 0..self.scale.cycles {
            let round = Instant::now();
            if i % 2 == 0 {
                self.hostchan_cycle(&format!("/run/bench/h/c{i}"), &mut hc, &mut rss);
                systemd_mount_cycle(&format!("/run/bench/s/c{i}"), &mut sm, &mut sm_rss);
            } else {
                systemd_mount_cycle(&format!("/run/bench/s/c{i}"), &mut sm, &mut sm_rss);
                self.hostchan_cycle(&format!("/run/bench/h/c{i}"), &mut hc, &mut rss);
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
        }
        let mut back_to_back = (Vec::new(), Vec::new(), Vec::new());
        let mut unused = Vec::new();
        for i in 0..self.scale.cycles {
            self.hostchan_cycle(
                &format!("/run/bench/b/c{i}"),
                &mut back_to_back,
                &mut unused,
            );
        }
        let floor = floor_cycles(self.scale.cycles);
        Rows::compare(
            1,
            ("hostchan create", &hc.0),
            ("systemd-mount", &sm.0),
            "create: hostchan / systemd-mount",
        );
        Rows::compare(
            1,
            ("hostchan delete", &hc.1),
            ("systemd-umount + rmdir", &sm.1),
            "delete: hostchan / systemd-umount + rmdir",
        );
        let (h, _) = Rows::compare(
            1,
            ("hostchan cycle", &hc.2),
            ("systemd-mount cycle", &sm.2),
            "cycle: hostchan / systemd-mount",
        );
        let f = Rows::timing(
            1,
            "floor: mkdir+mount(2)+umount(2)+rmdir",
            &floor,
            "in-process, private mount namespace".into(),
        )
        .median;
        Rows::timing(
            1,
            "hostchan cycle, back to back",
            &back_to_back.2,
            "no pause: PID 1's mount-event rate limit shows in p95".into(),
        );
        Rows::line(
            1,
            "  cycle: hostchan / floor",
            String::new(),
            format!("{:.0}x", ratio(h, f)),
        );
        rss.sort();
        Rows::line(
            7,
            "hostchan create, peak RSS",
            format!("{} KiB", rss[rss.len() / 2]),
            format!("median of {}, max {} KiB", rss.len(), rss[rss.len() - 1]),
        );
        sm_rss.sort();
        Rows::line(
            7,
            "systemd-mount, peak RSS",
            format!("{} KiB", sm_rss[sm_rss.len() / 2]),
            format!("median of {}, for comparison", sm_rss.len()),
        );
        must(&["systemctl", "stop", OWNER]);
    }

    /// 2: process start to exit.
    fn version(&self) {
        let mut hc = Vec::new();
        let mut sm = Vec::new();
        for _ in 0..self.scale.version_runs {
            hc.push(must(&self.hostchan(&["--version"])).wall);
            sm.push(must(&["systemd-mount", "--version"]).wall);
        }
        Rows::compare(
            2,
            ("hostchan --version", &hc),
            ("systemd-mount --version", &sm),
            "hostchan / systemd-mount",
        );
    }

    /// 3: `list` and `status` against the number of live channels, beside systemctl's own
    /// listing; then all of them go with their scope (systemd's BindsTo at scale).
    fn list(&self) {
        let owner = "bench-list.scope";
        start_scope(owner);
        let mut live = 0;
        let mut listed = Vec::new();
        let mut shown = Vec::new();
        let burst = burst_label();
        for &size in &self.scale.list_sizes {
            self.create_many(live..size, owner);
            live = size;
            let mut hc = Vec::new();
            let mut sc = Vec::new();
            let mut status = Vec::new();
            for run in 0..self.scale.list_runs {
                hc.push(must(&self.hostchan(&["list"])).wall);
                sc.push(
                    must(&[
                        "systemctl",
                        "list-units",
                        "--type=mount",
                        "--all",
                        "--no-pager",
                    ])
                    .wall,
                );
                let one = format!("/run/bench/l/c{}", run % size);
                status.push(must(&self.hostchan(&["status", &one])).wall);
            }
            let h = Rows::timing(
                3,
                &format!("hostchan list, {size} channels"),
                &hc,
                String::new(),
            );
            let s = Rows::timing(
                3,
                &format!("systemctl list-units, {size} channels"),
                &sc,
                String::new(),
            );
            Rows::line(
                3,
                &format!("  {size}: hostchan list / systemctl"),
                String::new(),
                format!(
                    "{:.2}x median, {:.2}x p95",
                    ratio(h.median, s.median),
                    ratio(h.p95, s.p95)
                ),
            );
            let st = Rows::timing(
                3,
                &format!("hostchan status of one, {size} channels"),
                &status,
                String::new(),
            );
            listed.push((size, h.median));
            shown.push((size, st.median));
        }
        for (what, series) in [("list", &listed), ("status of one", &shown)] {
            if let (Some(first), Some(last)) = (series.first(), series.last()) {
                Rows::line(
                    3,
                    &format!("  {what}: {} -> {} channels", first.0, last.0),
                    String::new(),
                    format!(
                        "time x{:.2} for channels x{:.0}",
                        ratio(last.1, first.1),
                        last.0 as f64 / first.0 as f64
                    ),
                );
            }
        }
        let t = Instant::now();
        must(&["systemctl", "stop", owner]);
        let records = Path::new("/var/lib/hostchan/channels");
        wait_until(
            Duration::from_secs(600),
            "the channels to go with their scope",
            || count_records(records) == 0,
        );
        Rows::line(
            3,
            &format!("stop the scope of {live} channels until all are gone"),
            ms(t.elapsed()),
            format!("unmounted, directories and records removed; PID 1's burst {burst}"),
        );
    }

    fn create_many(&self, range: std::ops::Range<usize>, owner: &str) {
        let paths: Vec<usize> = range.collect();
        let workers = 4;
        std::thread::scope(|s| {
            for chunk in paths.chunks(paths.len().div_ceil(workers).max(1)) {
                s.spawn(move || {
                    for i in chunk {
                        let spec = format!("/run/bench/l/c{i}:/x:rw:{SIZE}");
                        must(&self.hostchan(&["create", "--scope", owner, &spec]));
                    }
                });
            }
        });
    }

    /// 4: runc runs the hook at createRuntime for a container with 1 or with 8 channel
    /// annotations; the hook's own time is measured by `bench hook-timer`, which runc runs in
    /// its place. Rounds alternate, each after a second without mount events, so that one
    /// round's mounts and unmounts do not meet the next one's in PID 1's mount-event rate
    /// limit.
    fn hook(&self) {
        let rootfs = Path::new("/run/bench/hook/rootfs");
        busybox_rootfs(rootfs, 8);
        let timings = Path::new("/run/bench/hook/timings");
        let mut one = Vec::new();
        let mut eight = Vec::new();
        let mut pid1_one = Vec::new();
        let mut pid1_eight = Vec::new();
        for round in 0..self.scale.hook_rounds * 2 {
            // A second without mount events, so that PID 1's rate limit is cold.
            std::thread::sleep(Duration::from_millis(1200));
            let channels = if round % 2 == 0 { 1 } else { 8 };
            let name = format!("bh{round}");
            let bundle = self.hook_bundle(&name, rootfs, timings, channels);
            let _ = std::fs::remove_file(timings);
            let script = format!(
                "runc --systemd-cgroup run -d --bundle '{}' '{name}' </dev/null >/dev/null 2>/run/bench/hook/runc.err || {{ cat /run/bench/hook/runc.err >&2; exit 1; }}",
                bundle.display()
            );
            let pid1_before = pid1_cpu();
            must(&["sh", "-c", &script]);
            let pid1_took = pid1_cpu().saturating_sub(pid1_before);
            let took: f64 = std::fs::read_to_string(timings)
                .expect("the hook ran")
                .trim()
                .parse()
                .expect("a time in seconds");
            let took = Duration::from_secs_f64(took);
            if channels == 1 {
                one.push(took);
                pid1_one.push(pid1_took);
            } else {
                eight.push(took);
                pid1_eight.push(pid1_took);
            }
            must(&["runc", "--systemd-cgroup", "delete", "--force", &name]);
            wait_until(Duration::from_secs(60), "the channels to go", || {
                count_records(Path::new("/var/lib/hostchan/channels")) == 0
            });
        }
        // The same number of mounts by systemd's own tool, at once, bound to one scope: what
        // PID 1 itself takes for 1 and for 8 mount units.
        let owner = "bench-hook.scope";
        start_scope(owner);
        let mut sm_one = Vec::new();
        let mut sm_eight = Vec::new();
        for round in 0..self.scale.hook_rounds * 2 {
            std::thread::sleep(Duration::from_millis(1200));
            let mounts = if round % 2 == 0 { 1 } else { 8 };
            let paths: Vec<String> = (0..mounts)
                .map(|i| format!("/run/bench/hook/sm{round}/c{i}"))
                .collect();
            let argvs: Vec<Vec<String>> = paths
                .iter()
                .map(|path| systemd_mount_argv(path, owner))
                .collect();
            let (took, oks) = at_once(&argvs, true);
            assert_eq!(oks, mounts, "systemd-mount failed");
            if mounts == 1 {
                sm_one.push(took);
            } else {
                sm_eight.push(took);
            }
            for path in &paths {
                must(&["systemd-umount", "--quiet", path]);
                std::fs::remove_dir(path).expect("rmdir after systemd-umount");
            }
        }
        must(&["systemctl", "stop", owner]);
        let per = |name: &str, one: &[Duration], eight: &[Duration]| {
            let s1 = Rows::timing(4, &format!("{name}, 1"), one, String::new());
            let s8 = Rows::timing(4, &format!("{name}, 8"), eight, String::new());
            Rows::line(
                4,
                &format!("  {name}: 8 / 1"),
                String::new(),
                format!(
                    "{:.2}x median, {:.2}x p95",
                    ratio(s8.median, s1.median),
                    ratio(s8.p95, s1.p95)
                ),
            );
        };
        per("hook, channels", &one, &eight);
        per("systemd-mount at once, mounts", &sm_one, &sm_eight);
        // PID 1 works alone and one thing at a time: the CPU time it spends on 7 more channels
        // is time no hook for 8 channels can be faster by.
        let cpu1 = Rows::timing(
            4,
            "PID 1 CPU in runc run, channels, 1",
            &pid1_one,
            String::new(),
        );
        let cpu8 = Rows::timing(
            4,
            "PID 1 CPU in runc run, channels, 8",
            &pid1_eight,
            String::new(),
        );
        let hook1 = stats(&one).median;
        let floor = hook1 + cpu8.median.saturating_sub(cpu1.median);
        Rows::line(
            4,
            "  floor for 8: hook of 1 + PID 1 CPU of 7 more",
            ms(floor),
            format!("{:.2}x the hook of 1", ratio(floor, hook1)),
        );
    }

    fn hook_bundle(&self, name: &str, rootfs: &Path, timings: &Path, channels: usize) -> PathBuf {
        let bundle = PathBuf::from(format!("/run/bench/hook/{name}"));
        std::fs::create_dir_all(&bundle).expect("bundle directory");
        must(&["runc", "spec", "--bundle", &bundle.display().to_string()]);
        let path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("runc spec"))
                .expect("runc spec's JSON");
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["sleep", "1000"]);
        config["root"]["path"] = rootfs.display().to_string().into();
        config["root"]["readonly"] = false.into();
        config["linux"]["cgroupsPath"] = format!("system.slice:runc:{name}").into();
        let me = std::env::current_exe().expect("the bench's own path");
        let me = me.display().to_string();
        config["hooks"] = serde_json::json!({
            "createRuntime": [{
                "path": me,
                "args": [me, "hook-timer", timings, self.hostchan, "oci-hook"],
            }],
            "poststop": [{ "path": self.hostchan, "args": ["hostchan", "oci-hook"] }],
        });
        let annotations: serde_json::Map<String, serde_json::Value> = (0..channels)
            .map(|i| {
                (
                    format!("io.hostchan.channel.c{i}"),
                    format!("/run/hostchan/{name}/c{i}:/c{i}:rw:{SIZE}").into(),
                )
            })
            .collect();
        config["annotations"] = annotations.into();
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON"))
            .expect("config.json");
        bundle
    }

    /// 5: creates racing each other.
    fn parallel(&self) {
        start_scope(OWNER);
        let mut distinct = Vec::new();
        let mut distinct_errors = 0;
        let mut shared = Vec::new();
        let mut winners = Vec::new();
        for round in 0..self.scale.parallel_rounds {
            let specs: Vec<String> = (0..16)
                .map(|i| format!("/run/bench/p{round}/c{i}:/x:rw:{SIZE}"))
                .collect();
            let (wall, oks) = self.race(&specs);
            distinct.push(wall);
            distinct_errors += 16 - oks;
            for i in 0..16 {
                // A create that failed left nothing to delete.
                measure(&self.hostchan(&["delete", &format!("/run/bench/p{round}/c{i}")]));
            }

            let specs: Vec<String> = (0..8)
                .map(|_| format!("/run/bench/same{round}:/x:rw:{SIZE}"))
                .collect();
            let (wall, oks) = self.race(&specs);
            shared.push(wall);
            winners.push(oks);
            must(&self.hostchan(&["delete", &format!("/run/bench/same{round}")]));
        }
        Rows::timing(
            5,
            "16 creates at once, distinct paths (wall)",
            &distinct,
            format!("errors: {distinct_errors}"),
        );
        Rows::timing(
            5,
            "8 creates at once, one path (wall)",
            &shared,
            format!("winners per round: {winners:?}"),
        );
        must(&["systemctl", "stop", OWNER]);
    }

    /// Starts one create per spec at the same moment; returns the wall time until the last
    /// ends and how many succeeded.
    fn race(&self, specs: &[String]) -> (Duration, usize) {
        let argvs: Vec<Vec<String>> = specs
            .iter()
            .map(|spec| {
                self.hostchan(&["create", "--scope", OWNER, spec])
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        // Losers of the race for one path fail by design: only the distinct paths' failures
        // are findings.
        let say_failures = !specs.iter().skip(1).any(|s| s == &specs[0]);
        at_once(&argvs, say_failures)
    }
}

/// Runs every argv at the same moment; the wall time until the last ends, and how many
/// succeeded.
fn at_once(argvs: &[Vec<String>], say_failures: bool) -> (Duration, usize) {
    let barrier = Arc::new(Barrier::new(argvs.len() + 1));
    std::thread::scope(|s| {
        let handles: Vec<_> = argvs
            .iter()
            .map(|argv| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    barrier.wait();
                    let exit = measure(&argv);
                    if !exit.ok && say_failures {
                        // Kept out of the table, but said: an error is a finding.
                        eprintln!("bench: {} failed: {}", argv.join(" "), exit.stderr.trim());
                    }
                    exit.ok
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let oks = handles
            .into_iter()
            .map(|h| h.join())
            .filter(|ok| matches!(ok, Ok(true)))
            .count();
        (t.elapsed(), oks)
    })
}

/// 6, one measurement: `n` containers start at once, each with its own scope (started
/// beforehand), and each gets a channel from `tool`; then all the scopes stop at once and the
/// clock runs until every channel is gone (for systemd-mount, which leaves the directories,
/// until every path is unmounted and the bench has removed the directory, as its caller must).
/// `hot`: just before, PID 1 has seen more mount events in the last second than its burst
/// allows. Prints one `STORM` line.
fn storm(hostchan: &str, tool: &str, n: usize, hot: bool) {
    let scopes: Vec<String> = (0..n).map(|i| format!("storm-{i}.scope")).collect();
    for scope in &scopes {
        start_scope(scope);
    }
    let paths: Vec<String> = (0..n).map(|i| format!("/run/storm/c{i}")).collect();
    let argvs: Vec<Vec<String>> = paths
        .iter()
        .zip(&scopes)
        .map(|(path, scope)| match tool {
            "hostchan" => vec![
                hostchan.into(),
                "create".into(),
                "--scope".into(),
                scope.clone(),
                format!("{path}:/x:rw:{SIZE}"),
            ],
            _ => systemd_mount_argv(path, scope),
        })
        .collect();
    // Whatever starting the scopes stirred up is over; then, for `hot`, 12 mount events 20 ms
    // apart: more than PID 1's default burst of 5 in a second.
    std::thread::sleep(Duration::from_millis(1100));
    if hot {
        let dir = Path::new("/run/storm-hot");
        std::fs::create_dir_all(dir).expect("mkdir");
        for _ in 0..6 {
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount");
            std::thread::sleep(Duration::from_millis(20));
            umount(dir).expect("umount");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // When the last tmpfs appears in the kernel (seen from here, polled every millisecond): a
    // create cannot return before its mount exists, and PID 1 mounts none while its watch is
    // rate limited. The bound on the creates for the case.
    let started = Instant::now();
    let in_kernel = std::thread::spawn({
        let paths = paths.clone();
        move || {
            let deadline = started + Duration::from_secs(60);
            while Instant::now() < deadline {
                let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let mounted: std::collections::HashSet<&str> = table
                    .lines()
                    .filter_map(|line| line.split(' ').nth(4))
                    .collect();
                if paths.iter().all(|path| mounted.contains(path.as_str())) {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Duration::ZERO
        }
    });
    let (created, oks) = at_once(&argvs, true);
    let in_kernel = in_kernel.join().unwrap_or_default();

    let mut stop = vec!["systemctl", "stop", "--no-block"];
    stop.extend(scopes.iter().map(String::as_str));
    let t = Instant::now();
    must(&stop);
    let mut left: Vec<&String> = paths.iter().collect();
    while !left.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the storm's channels did not go"
        );
        left.retain(|path| match tool {
            "hostchan" => Path::new(path).exists(),
            _ => {
                if is_mount_point(path) {
                    true
                } else {
                    // Never mounted (a failed start) or unmounted now: the caller's rmdir.
                    let _ = std::fs::remove_dir(path);
                    Path::new(path).exists()
                }
            }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    let teardown = t.elapsed();
    println!(
        "STORM\t{}\t{}\t{n}\t{tool}\t{}\t{}\t{}\t{}",
        burst_label(),
        if hot { "hot" } else { "fresh" },
        created.as_secs_f64(),
        n - oks,
        teardown.as_secs_f64(),
        in_kernel.as_secs_f64()
    );
}

/// A tmpfs as hostchan makes it, by systemd-mount, bound to `owner`.
fn systemd_mount_argv(path: &str, owner: &str) -> Vec<String> {
    [
        "systemd-mount",
        "--quiet",
        "--collect",
        "-t",
        "tmpfs",
        "-o",
        OPTIONS,
        "-p",
        &format!("BindsTo={owner}"),
        "-p",
        &format!("After={owner}"),
        "tmpfs",
        path,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn is_mount_point(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        Path::new(path).parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

fn burst_label() -> String {
    match std::env::var("BENCH_BURST") {
        Ok(burst) if !burst.is_empty() => burst,
        _ => "5 (default)".into(),
    }
}

/// A busybox root for runc, with `/c0`.. as the containers' channel paths.
fn busybox_rootfs(rootfs: &Path, channels: usize) {
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs");
    }
    for i in 0..channels {
        std::fs::create_dir_all(rootfs.join(format!("c{i}"))).expect("rootfs");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static (bench/run does)");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for tool in ["sh", "sleep"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool));
    }
}

fn count_records(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// `bench hook-timer FILE COMMAND...`: what runc runs as the hook. Runs COMMAND with the
/// runtime's state on its stdin, writes its wall time (seconds) to FILE, exits as it did.
fn hook_timer(args: &[String]) -> std::process::ExitCode {
    let (Some(file), Some(command)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench hook-timer FILE COMMAND...");
        return std::process::ExitCode::from(2);
    };
    let t = Instant::now();
    let status = Command::new(command)
        .args(&args[2..])
        .status()
        .expect("run the hook");
    let took = t.elapsed();
    std::fs::write(file, format!("{}\n", took.as_secs_f64())).expect("write the time");
    match status.code() {
        Some(0) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

/// `bench print FILE`: the rows of every phase as one table, sections in order; the storm
/// measurements as medians per case, hostchan beside systemd-mount.
fn print(file: &str) {
    let text = std::fs::read_to_string(file).expect("the results file");
    let mut sections: BTreeMap<usize, Vec<[String; 5]>> = BTreeMap::new();
    // (burst, n, condition, tool) -> (create seconds, teardown seconds, errors, the last tmpfs
    // in the kernel)
    type Case = (String, usize, String, String);
    type Samples = (Vec<Duration>, Vec<Duration>, usize, Vec<Duration>);
    let mut storms: BTreeMap<Case, Samples> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["ROW", section, what, n, median, p95, note] => {
                let section: usize = section.parse().expect("a section number");
                sections.entry(section).or_default().push([
                    (*what).into(),
                    (*n).into(),
                    (*median).into(),
                    (*p95).into(),
                    (*note).into(),
                ]);
            }
            ["STORM", burst, condition, n, tool, created, errors, teardown, in_kernel] => {
                let case = (
                    (*burst).to_owned(),
                    n.parse().expect("n"),
                    (*condition).to_owned(),
                    (*tool).to_owned(),
                );
                let entry = storms.entry(case).or_default();
                entry
                    .0
                    .push(Duration::from_secs_f64(created.parse().expect("seconds")));
                entry
                    .1
                    .push(Duration::from_secs_f64(teardown.parse().expect("seconds")));
                entry.2 += errors.parse::<usize>().expect("errors");
                entry
                    .3
                    .push(Duration::from_secs_f64(in_kernel.parse().expect("seconds")));
            }
            _ => {}
        }
    }
    let mut storm_rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (burst, n, condition, _) in storms.keys() {
        if !seen.insert((burst.clone(), *n, condition.clone())) {
            continue;
        }
        let get = |tool: &str| storms.get(&(burst.clone(), *n, condition.clone(), tool.into()));
        let (Some(h), Some(s)) = (get("hostchan"), get("systemd-mount")) else {
            continue;
        };
        let case = format!("{n} at once, {condition} PID 1, burst {burst}");
        let row = |what: String, samples: &[Duration], note: String| {
            let st = stats(samples);
            [what, st.n.to_string(), ms(st.median), ms(st.p95), note]
        };
        storm_rows.push(row(
            format!("hostchan create, {case}"),
            &h.0,
            format!("errors: {}", h.2),
        ));
        storm_rows.push(row(
            format!("systemd-mount, {case}"),
            &s.0,
            format!("errors: {}", s.2),
        ));
        storm_rows.push([
            "  create: hostchan / systemd-mount".into(),
            String::new(),
            format!("{:.2}x", ratio(stats(&h.0).median, stats(&s.0).median)),
            String::new(),
            String::new(),
        ]);
        storm_rows.push(row(
            format!("  hostchan's last tmpfs in the kernel, {case}"),
            &h.3,
            format!(
                "the creates' bound: they returned {} after it (median)",
                ms(stats(&h.0).median.saturating_sub(stats(&h.3).median))
            ),
        ));
        storm_rows.push(row(
            format!("hostchan teardown, {case}"),
            &h.1,
            "scopes stopped until every directory is gone".into(),
        ));
        storm_rows.push(row(
            format!("systemd-mount teardown, {case}"),
            &s.1,
            "until every path is unmounted and rmdir'd".into(),
        ));
        storm_rows.push([
            "  teardown: hostchan / systemd-mount".into(),
            String::new(),
            format!("{:.2}x", ratio(stats(&h.1).median, stats(&s.1).median)),
            String::new(),
            String::new(),
        ]);
    }
    if !storm_rows.is_empty() {
        sections.entry(6).or_default().extend(storm_rows);
    }

    let header = ["what", "n", "median", "p95", "ratio / note"].map(String::from);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(sections.values().flatten()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 5]| {
        format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    let mut out = line(&header);
    for (section, rows) in &sections {
        let title = SECTIONS.get(section - 1).copied().unwrap_or("?");
        let _ = writeln!(out, "-- {title}");
        for row in rows {
            out.push_str(&line(row));
        }
    }
    print!("{out}");
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hostchan = || std::env::var("HOSTCHAN").expect("HOSTCHAN: the hostchan binary to measure");
    let bench = || Bench {
        hostchan: hostchan(),
        scale: Scale::from_env(),
    };
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["phase", "main"] => {
            let bench = bench();
            bench.create_delete();
            bench.version();
            bench.parallel();
        }
        ["phase", "hook"] => bench().hook(),
        ["phase", "list"] => bench().list(),
        ["phase", "nri", containerd_dir] => nri::run(&hostchan(), containerd_dir, tiny()),
        ["phase", "storm", tool @ ("hostchan" | "systemd-mount"), n, condition @ ("fresh" | "hot")] => {
            storm(
                &hostchan(),
                tool,
                n.parse().expect("a number of containers"),
                *condition == "hot",
            )
        }
        ["hook-timer", ..] => return hook_timer(&args[1..]),
        ["print", file] => print(file),
        _ => {
            eprintln!("usage: bench phase main|hook|list | bench phase nri CONTAINERD_DIR | bench phase storm hostchan|systemd-mount N fresh|hot | bench print FILE");
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}
