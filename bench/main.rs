//! hostchan's benchmarks. `bench/run` builds this (`--example bench`, release) and runs it inside
//! the sandboxed systemd; it prints one table of medians, p95 and ratios, measured side by side in
//! one run. It times, it never asserts a speed.
//!
//! Environment: HOSTCHAN (the binary under test), BENCH_SCALE=tiny (CI: a few samples each).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount, MsFlags};

struct Scale {
    cycles: usize,
    version_runs: usize,
    list_sizes: Vec<usize>,
    list_runs: usize,
    parallel_rounds: usize,
}

impl Scale {
    fn from_env() -> Scale {
        if std::env::var("BENCH_SCALE").as_deref() == Ok("tiny") {
            Scale {
                cycles: 3,
                version_runs: 3,
                list_sizes: vec![2, 4],
                list_runs: 2,
                parallel_rounds: 1,
            }
        } else {
            Scale {
                cycles: 50,
                version_runs: 100,
                list_sizes: vec![10, 100, 1000],
                list_runs: 20,
                parallel_rounds: 5,
            }
        }
    }
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

struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn timing(&mut self, what: &str, samples: &[Duration], note: String) -> Stats {
        let s = stats(samples);
        self.rows.push([
            what.to_owned(),
            s.n.to_string(),
            ms(s.median),
            ms(s.p95),
            note,
        ]);
        s
    }

    /// Two timings and the ratio of their medians; returns the medians.
    fn compare(
        &mut self,
        a: (&str, &[Duration]),
        b: (&str, &[Duration]),
        ratio_label: &str,
    ) -> (Duration, Duration) {
        let a = self.timing(a.0, a.1, String::new()).median;
        let b = self.timing(b.0, b.1, String::new()).median;
        self.line(
            &format!("  {ratio_label}"),
            String::new(),
            format!("{:.2}x", ratio(a, b)),
        );
        (a, b)
    }

    fn line(&mut self, what: &str, value: String, note: String) {
        self.rows
            .push([what.to_owned(), String::new(), value, String::new(), note]);
    }

    fn section(&mut self, title: &str) {
        self.rows.push([
            format!("-- {title}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    fn print(&self) {
        let header = ["what", "n", "median", "p95", "ratio / note"];
        let mut widths = header.map(str::len);
        for row in &self.rows {
            if row[0].starts_with("--") {
                continue;
            }
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let print = |cells: [&str; 5]| {
            println!(
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            );
        };
        print(header);
        for row in &self.rows {
            if row[0].starts_with("--") {
                println!("{}", row[0]);
            } else {
                print([&row[0], &row[1], &row[2], &row[3], &row[4]]);
            }
        }
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

struct Bench {
    hostchan: String,
    scale: Scale,
    table: Table,
}

const SIZE: &str = "1048576";
const OPTIONS: &str = "mode=1777,size=1048576,nosuid,nodev,noexec";
const OWNER: &str = "bench.scope";

fn start_scope(name: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "systemd-run --quiet --scope --unit={name} sleep infinity </dev/null >/dev/null 2>&1 &"
        ))
        .status()
        .expect("systemd-run");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("systemctl")
            .args(["is-active", name])
            .output()
            .expect("systemctl");
        if out.stdout.starts_with(b"active") {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// mount + umount through systemd-mount, then the rmdir it leaves to its caller.
fn systemd_mount_cycle(
    path: &str,
    times: &mut (Vec<Duration>, Vec<Duration>, Vec<Duration>),
    rss: &mut Vec<i64>,
) {
    let t = Instant::now();
    let mounted = must(&[
        "systemd-mount",
        "--quiet",
        "--collect",
        "-t",
        "tmpfs",
        "-o",
        OPTIONS,
        "-p",
        &format!("BindsTo={OWNER}"),
        "-p",
        &format!("After={OWNER}"),
        "tmpfs",
        path,
    ]);
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

    /// 1: a channel's whole life, three ways. PID 1 handles at most 5 mount events a second
    /// before it delays the rest (systemd's mount-event rate limit), so each round starts a
    /// second after the previous one and holds 4 events (a create and a delete each for
    /// hostchan and systemd-mount), in alternating order: neither pays for the other's events.
    /// `back_to_back` measures hostchan without the pause, where the limit shows.
    fn create_delete(&mut self) {
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
        self.table.section(&format!(
            "1. one channel, create + delete (tmpfs {SIZE} bytes, bound to a scope, directory removed)"
        ));
        self.table.compare(
            ("hostchan create", &hc.0),
            ("systemd-mount", &sm.0),
            "create: hostchan / systemd-mount",
        );
        self.table.compare(
            ("hostchan delete", &hc.1),
            ("systemd-umount + rmdir", &sm.1),
            "delete: hostchan / systemd-umount",
        );
        let (h, _) = self.table.compare(
            ("hostchan cycle", &hc.2),
            ("systemd-mount cycle", &sm.2),
            "cycle: hostchan / systemd-mount",
        );
        let f = self
            .table
            .timing(
                "floor: mkdir+mount(2)+umount(2)+rmdir",
                &floor,
                "in-process, private mount namespace".into(),
            )
            .median;
        self.table.timing(
            "hostchan cycle, back to back",
            &back_to_back.2,
            "no pause: PID 1's mount-event rate limit shows in p95".into(),
        );
        self.table.line(
            "  cycle: hostchan / floor",
            String::new(),
            format!("{:.0}x", ratio(h, f)),
        );
        rss.sort();
        self.table.section("5. peak RSS");
        self.table.line(
            "hostchan create, peak RSS",
            format!("{} KiB", rss[rss.len() / 2]),
            format!("median of {}, max {} KiB", rss.len(), rss[rss.len() - 1]),
        );
        sm_rss.sort();
        self.table.line(
            "systemd-mount, peak RSS",
            format!("{} KiB", sm_rss[sm_rss.len() / 2]),
            format!("median of {}, for comparison", sm_rss.len()),
        );
    }

    /// 2: process start to exit.
    fn version(&mut self) {
        let mut hc = Vec::new();
        let mut sm = Vec::new();
        for _ in 0..self.scale.version_runs {
            hc.push(must(&self.hostchan(&["--version"])).wall);
            sm.push(must(&["systemd-mount", "--version"]).wall);
        }
        self.table.section("2. process start to exit");
        self.table.compare(
            ("hostchan --version", &hc),
            ("systemd-mount --version", &sm),
            "hostchan / systemd-mount",
        );
    }

    /// 3: `list` against the number of live channels, beside systemctl's own listing.
    fn list(&mut self) {
        self.table.section(
            "3. list with N live channels (one ListUnitsByNames call), vs systemctl list-units --type=mount",
        );
        start_scope("bench-list.scope");
        let mut live = 0;
        let mut per_channel = Vec::new();
        for &size in &self.scale.list_sizes.clone() {
            self.create_many(live..size, "bench-list.scope");
            live = size;
            let mut hc = Vec::new();
            let mut sc = Vec::new();
            for _ in 0..self.scale.list_runs {
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
            }
            let h = self
                .table
                .timing(
                    &format!("hostchan list, {size} channels"),
                    &hc,
                    String::new(),
                )
                .median;
            let s = self
                .table
                .timing(
                    &format!("systemctl list-units, {size} channels"),
                    &sc,
                    String::new(),
                )
                .median;
            self.table.line(
                &format!("  {size}: hostchan / systemctl"),
                String::new(),
                format!("{:.2}x", ratio(h, s)),
            );
            per_channel.push((size, h));
        }
        if let (Some(first), Some(last)) = (per_channel.first(), per_channel.last()) {
            self.table.line(
                &format!("  growth {} -> {} channels", first.0, last.0),
                String::new(),
                format!(
                    "time x{:.1} for channels x{:.0}",
                    ratio(last.1, first.1),
                    last.0 as f64 / first.0 as f64
                ),
            );
        }
        // All of them go with their scope: systemd's BindsTo at scale.
        let t = Instant::now();
        must(&["systemctl", "stop", "bench-list.scope"]);
        let records = Path::new("/var/lib/hostchan/channels");
        let deadline = Instant::now() + Duration::from_secs(300);
        while count_records(records) > 0 {
            assert!(
                Instant::now() < deadline,
                "channels did not go with their scope"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.table.line(
            &format!("stop the scope of {live} channels until all are gone"),
            ms(t.elapsed()),
            "unmounted, directories and records removed".into(),
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

    /// 4: creates racing each other.
    fn parallel(&mut self) {
        self.table.section("4. parallel creates");
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
        self.table.timing(
            "16 creates at once, distinct paths (wall)",
            &distinct,
            format!("errors: {distinct_errors}"),
        );
        self.table.timing(
            "8 creates at once, one path (wall)",
            &shared,
            format!("winners per round: {winners:?}"),
        );
    }

    /// Starts one create per spec at the same moment; returns the wall time until the last
    /// ends and how many succeeded.
    fn race(&self, specs: &[String]) -> (Duration, usize) {
        let barrier = Arc::new(Barrier::new(specs.len() + 1));
        let started = std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .iter()
                .map(|spec| {
                    let barrier = barrier.clone();
                    s.spawn(move || {
                        barrier.wait();
                        measure(&self.hostchan(&["create", "--scope", OWNER, spec])).ok
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
        });
        started
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

fn main() {
    let hostchan = std::env::var("HOSTCHAN").expect("HOSTCHAN: the hostchan binary to measure");
    let mut bench = Bench {
        hostchan,
        scale: Scale::from_env(),
        table: Table { rows: Vec::new() },
    };
    start_scope(OWNER);
    bench.create_delete();
    bench.version();
    bench.parallel();
    bench.list();
    bench.table.print();
}
