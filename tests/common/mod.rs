//! The test harness: a private systemd booted as PID 1 of new PID and mount namespaces, with
//! tmpfs over every path it would write on the real machine (tests/sandbox/boot.sh). Each test
//! gets its own; dropping it kills the namespace, and with it every process and mount inside.

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const HOSTCHAN: &str = env!("CARGO_BIN_EXE_hostchan");
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The unit directory every sandbox boots from, written once per test process. It lives under
/// target/, outside the paths the sandbox covers with tmpfs, so systemd can read it.
fn unit_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-units");
        let status = Command::new(repo().join("tests/sandbox/make-units.sh"))
            .arg(&dir)
            .arg(env!("CARGO_BIN_EXE_hostchan"))
            .status()
            .expect("run tests/sandbox/make-units.sh");
        assert!(status.success(), "tests/sandbox/make-units.sh failed");
        dir
    })
}

/// Refuses to go on where a sandbox cannot work, loudly: a test that cannot run must not pass.
fn preflight() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the integration tests boot a private systemd and need root (run: sudo ./tests/run); \
             they fail rather than pass without testing anything"
        );
    }
    for hidden in ["/tmp", "/run", "/var/tmp"] {
        if repo().starts_with(hidden) {
            panic!(
                "the repository is under {hidden}, which the sandbox hides under a tmpfs; clone it elsewhere"
            );
        }
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        panic!("/lib/systemd/systemd is missing: install systemd (apt-get install systemd dbus)");
    }
}

pub struct Sandbox {
    unshare: Child,
    /// The name of the sandbox's cgroup in every hierarchy.
    id: String,
    /// systemd's pid as seen from outside the namespace.
    pid: i32,
    log: PathBuf,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// What a sandbox boots with beyond the defaults.
#[derive(Debug, Default)]
pub struct Boot {
    /// Used as /var/lib/hostchan, so that records survive the sandbox like a reboot.
    pub state_dir: Option<PathBuf>,
    /// A unit directory searched first (for units under test, and .wants/ links).
    pub extra_units: Option<PathBuf>,
}

impl Sandbox {
    pub fn boot() -> Sandbox {
        Sandbox::boot_with(&Boot::default())
    }

    pub fn boot_with(options: &Boot) -> Sandbox {
        preflight();
        let units = unit_dir();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "sandbox-{}-{:?}.log",
            std::process::id(),
            std::thread::current().id()
        ));
        let log_file = fs::File::create(&log).expect("create sandbox log");
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "hostchan-sandbox-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount", "--kill-child=SIGKILL"])
            .arg(repo().join("tests/sandbox/boot.sh"))
            .arg(units)
            .arg(&id)
            .env_remove("HOSTCHAN_STATE_DIR")
            .env_remove("HOSTCHAN_EXTRA_UNITS")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        if let Some(dir) = &options.state_dir {
            command.env("HOSTCHAN_STATE_DIR", dir);
        }
        if let Some(dir) = &options.extra_units {
            command.env("HOSTCHAN_EXTRA_UNITS", dir);
        }
        die_with_parent(&mut command);
        let unshare = command.spawn().expect("spawn unshare");
        let mut sandbox = Sandbox {
            pid: 0,
            unshare,
            id,
            log,
        };
        sandbox.wait_until_running();
        sandbox
    }

    fn wait_until_running(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let children = format!("/proc/{0}/task/{0}/children", self.unshare.id());
        loop {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                panic!(
                    "the sandbox exited at boot ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if self.pid == 0 {
                self.pid = fs::read_to_string(&children)
                    .ok()
                    .and_then(|text| text.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
            }
            if self.pid != 0 && self.is_systemd() {
                let state = self.run(&["systemctl", "is-system-running"]);
                if matches!(state.stdout.trim(), "running" | "degraded") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "the sandboxed systemd did not come up within {BOOT_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_systemd(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/comm", self.pid)).is_ok_and(|c| c.trim() == "systemd")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command inside the sandbox (its mount and PID namespaces).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(argv)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, argv: &[&str]) -> Run {
        Run::from(self.command(argv).output().expect("run nsenter"))
    }

    pub fn sh(&self, script: &str) -> Run {
        self.run(&["sh", "-c", script])
    }

    pub fn hostchan(&self, args: &[&str]) -> Run {
        let mut argv = vec![HOSTCHAN];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// A path inside the sandbox, reachable from the test process through /proc/PID/root.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    /// Starts `sleep infinity` in a scope named `name` (like a container's scope) and returns
    /// the sleep's pid inside the sandbox.
    pub fn start_scope(&self, name: &str) -> u32 {
        let script = format!(
            "systemd-run --quiet --scope --unit={name} sleep infinity </dev/null >/dev/null 2>&1 & echo $!"
        );
        let pid: u32 = self
            .sh(&script)
            .ok()
            .stdout
            .trim()
            .parse()
            .expect("scope pid");
        self.wait_for(
            || self.unit_state(name) == "active",
            &format!("{name} to become active"),
        );
        pid
    }

    /// Stops the sandbox's systemd (SIGSTOP from outside its namespace), as a PID 1 that hangs:
    /// calls to it go unanswered until [`Sandbox::thaw`].
    pub fn freeze(&self) {
        kill(Pid::from_raw(self.pid), Signal::SIGSTOP).expect("SIGSTOP systemd");
    }

    pub fn thaw(&self) {
        kill(Pid::from_raw(self.pid), Signal::SIGCONT).expect("SIGCONT systemd");
    }

    /// `ActiveState` of a unit, `gone` when systemd does not have it loaded.
    pub fn unit_state(&self, unit: &str) -> String {
        let out = self.run(&["systemctl", "show", "-P", "LoadState,ActiveState", unit]);
        let mut lines = out.stdout.lines();
        match (lines.next(), lines.next()) {
            (Some("loaded"), Some(state)) => state.to_owned(),
            _ => "gone".to_owned(),
        }
    }

    pub fn property(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "-P", property, unit])
            .stdout
            .trim()
            .to_owned()
    }

    /// Units whose names match a glob, loaded in any state.
    pub fn units_matching(&self, pattern: &str) -> Vec<String> {
        self.run(&[
            "systemctl",
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            pattern,
        ])
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
    }

    /// Mount options of the mount at `path`, or None when nothing is mounted there.
    pub fn mount_options(&self, path: &str) -> Option<String> {
        let out = self.run(&[
            "findmnt",
            "-rn",
            "-o",
            "FSTYPE,OPTIONS",
            "--mountpoint",
            path,
        ]);
        (out.code == 0).then(|| out.stdout.trim().to_owned())
    }

    /// The journal of `unit` (`-o cat`) once it holds every line in `needles`: journald takes
    /// a moment to store what a process logged, more so on a loaded machine.
    #[track_caller]
    pub fn journal_with(&self, unit: &str, needles: &[&str]) -> String {
        self.journal_matching(&["-u", unit], needles)
    }

    /// Waits until the journal's lines that `matches` selects (journalctl's arguments) hold
    /// every needle, and returns them.
    #[track_caller]
    pub fn journal_matching(&self, matches: &[&str], needles: &[&str]) -> String {
        let read = || {
            let mut argv = vec!["journalctl", "--no-pager", "-o", "cat"];
            argv.extend_from_slice(matches);
            self.run(&argv).stdout
        };
        // Generous: on a loaded machine journald can take seconds to store a line.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = read();
            if needles.iter().all(|needle| text.contains(needle)) {
                return text;
            }
            if Instant::now() >= deadline {
                // What the journal holds without the unit match: whether the lines were lost
                // or only not attributed to the unit (their _SYSTEMD_UNIT and stream fields).
                let all = self
                    .run(&[
                        "journalctl",
                        "--no-pager",
                        "-o",
                        "verbose",
                        "-n",
                        "30",
                        // Not the kernel's lines, which the sandbox's journald also reads from
                        // the host and which filled the last 30 entries of a failure seen.
                        "_TRANSPORT=stdout",
                        "_TRANSPORT=journal",
                        "_TRANSPORT=syslog",
                    ])
                    .stdout;
                panic!(
                    "timed out waiting for {needles:?} in journalctl {matches:?}:\n{text}\n\
                     the last entries of the journal but the kernel's:\n{all}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until systemd has no job queued or running: what was asked of it is done.
    #[track_caller]
    pub fn wait_for_no_jobs(&self) {
        self.wait_for(
            || {
                self.run(&["systemctl", "list-jobs", "--no-legend"])
                    .stdout
                    .trim()
                    .is_empty()
            },
            "systemd's jobs to end",
        );
    }

    #[track_caller]
    pub fn wait_for(&self, condition: impl Fn() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn record_files(&self) -> Vec<String> {
        match fs::read_dir(self.path("/var/lib/hostchan/channels")) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The lock files stay; records and temporary files must not.
                .filter(|name| name != ".lock" && name != ".write.lock")
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Channel units systemd has loaded, in any state, found by hostchan's descriptions.
    pub fn channel_units(&self) -> Vec<String> {
        self.run(&["systemctl", "list-units", "--all", "--plain", "--no-legend"])
            .stdout
            .lines()
            .filter(|line| {
                line.contains("Host channel ") || line.contains("Remove host channel directory ")
            })
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Asserts that nothing of a channel is left: no directory, mount, unit or record. A record
    /// of a channel under /run whose owner stopped goes a moment after its unit, by the prune
    /// the mount's stop starts, and PID 1 unloads a stopped unit in a pass after its stop job
    /// ended (a delete returns at the job's end, as systemd-umount does): both are waited for,
    /// up to 10 s (a unit systemd forgot to unload stays for good, and fails this).
    #[track_caller]
    pub fn assert_no_trace(&self, host_path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!self.record_files().is_empty() || !self.channel_units().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.path(host_path).exists(), "{host_path} still exists");
        assert_eq!(
            self.mount_options(host_path),
            None,
            "{host_path} still mounted"
        );
        assert_eq!(
            self.channel_units(),
            Vec::<String>::new(),
            "channel units left"
        );
        assert_eq!(self.record_files(), Vec::<String>::new(), "records left");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SIGKILL to PID 1 of the namespace ends every process in it; its mounts go with the
        // mount namespace. SIGTERM would not do: systemd re-executes itself on it.
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        remove_cgroups(&self.id);
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// If the test thread dies without dropping the sandbox, the kernel kills unshare, and
/// unshare's --kill-child kills systemd and so the namespace.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one syscall (prctl).
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Removes a dead sandbox's cgroups, deepest first; the kernel frees a cgroup only once its
/// last process is gone, which can take a moment after SIGKILL.
fn remove_cgroups(id: &str) {
    fn remove_tree(dir: &Path) -> bool {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
        }
        fs::remove_dir(dir).is_ok() || !dir.exists()
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies.flatten().map(|h| h.path().join(id)).collect();
    while !roots.iter().all(|root| remove_tree(root)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory under target/tmp (outside the sandbox's tmpfs, so systemd and runtimes inside
/// see it), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test directory");
        TempDir(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A minimal container root: busybox (from busybox-static) and the directories runc needs.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static (tests/run does)");
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "cat", "ls", "echo", "sleep", "dd", "df", "mount", "grep", "test", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    rootfs
}

/// A runc bundle in `dir` running `sleep 1000` in the scope runc-<name>.scope; `edit` may
/// change the config before it is written.
pub fn runc_bundle(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let bundle = dir.join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    let rootfs = busybox_rootfs(dir);
    let status = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc is missing: install runc (tests/run does)");
    assert!(status.success());
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    config["root"]["path"] = rootfs.display().to_string().into();
    config["root"]["readonly"] = false.into();
    config["linux"]["cgroupsPath"] = format!("system.slice:runc:{name}").into();
    edit(&mut config);
    fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    bundle
}

/// Gives a runc bundle's container a user namespace of its own, its root mapped to host uid
/// and gid 100000.
pub fn with_user_namespace(config: &mut serde_json::Value) {
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    config["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    config["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
}

impl Sandbox {
    pub fn runc(&self, args: &[&str]) -> Run {
        let mut argv = vec!["runc", "--systemd-cgroup"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// `runc run -d` of a bundle; returns the container's init pid.
    ///
    /// The detached container inherits runc's stdio, so runc's output goes to a file: a pipe
    /// would stay open as long as the container runs.
    pub fn runc_start(&self, bundle: &Path, name: &str) -> Run {
        let script = format!(
            "runc --systemd-cgroup run -d --bundle '{}' '{name}' </dev/null >/dev/null 2>/run/runc-{name}.err; rc=$?; cat /run/runc-{name}.err >&2; exit $rc",
            bundle.display()
        );
        self.sh(&script)
    }

    pub fn runc_pid(&self, name: &str) -> String {
        let state = self.runc(&["state", name]).ok().json();
        state["pid"]
            .as_i64()
            .expect("a running container has a pid")
            .to_string()
    }

    pub fn runc_exec(&self, name: &str, script: &str) -> Run {
        self.runc(&["exec", name, "sh", "-c", script])
    }
}

/// podman as the container tests run it: its storage in `storage`, hooks.d files from
/// `hooks`, the systemd cgroup manager, and `runtime` (podman's default when `None`).
pub struct Podman<'a> {
    pub sandbox: &'a Sandbox,
    pub storage: String,
    pub hooks: String,
    pub runtime: Option<&'a str>,
}

impl Podman<'_> {
    pub fn run(&self, args: &[&str]) -> Run {
        let mut argv = vec![
            "podman",
            "--root",
            &self.storage,
            "--runroot",
            "/run/podman",
            "--cgroup-manager",
            "systemd",
            "--hooks-dir",
            &self.hooks,
            "--log-level",
            "error",
        ];
        if let Some(runtime) = self.runtime {
            argv.extend(["--runtime", runtime]);
        }
        argv.extend_from_slice(args);
        self.sandbox.run(&argv)
    }
}
