//! Attaching a channel inside a container's mount namespace, with the new mount API: clone the
//! host mount, make the clone read-only for `ro`, enter the container's mount namespace from a
//! thread of its own, resolve the container path inside the container's root (never outside it,
//! whatever symlinks the rootfs holds), create what is missing, and move the clone there.
//! Every directory on the way is checked: never a kernel file system (procfs, sysfs, ...), and,
//! past a directory others can write, only entries nobody else can rename (a mount point that
//! someone else can move or remove would take the channel with it). Detaching acts on the
//! mount attached, by the kernel's id for it, wherever it is now.

use std::cell::OnceCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use rustix::fs::{mkdirat, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use crate::error::{Context, Error, Result};
use crate::model::Attached;
use crate::spec::{Access, ChannelSpec};

/// Where in which container a channel goes.
#[derive(Debug, Clone)]
pub struct AttachPoint<'a> {
    /// A process of the container (its init), as seen from hostchan.
    pub pid: i32,
    /// The container's root as a path inside the container's mount namespace, when the
    /// container has not pivoted into it yet (an OCI createRuntime hook); `None` for a running
    /// container, whose root is already `/proc/<pid>/root`.
    pub rootfs: Option<&'a Path>,
    pub container_path: &'a Path,
    pub access: Access,
}

/// The identity of a process and of its mount namespace, now.
fn identity_of(pid: i32) -> Option<(u64, u64, u64)> {
    let stat = rustix::fs::stat(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some((start_time_of(pid)?, stat.st_dev, stat.st_ino))
}

/// Field 22 of /proc/<pid>/stat, after the command name (which may hold spaces and parens).
fn start_time_of(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the channel is attached in the container `pid` is in now: the very process it was
/// attached through, in the same mount namespace.
pub fn is_attached_in(attached: &Attached, pid: i32) -> bool {
    pid == attached.pid
        && identity_of(pid)
            == Some((
                attached.start_time,
                attached.mount_ns_dev,
                attached.mount_ns_ino,
            ))
}

/// Whether the container the channel was attached in still runs.
pub fn attached_container_runs(attached: &Attached) -> bool {
    is_attached_in(attached, attached.pid)
}

/// Attaches the channel and says where, for a later [`detach`].
pub fn attach(host_path: &Path, point: &AttachPoint<'_>) -> Result<Attached> {
    let (start_time, mount_ns_dev, mount_ns_ino) = identity_of(point.pid).ok_or_else(|| {
        Error::owner(format!(
            "cannot look at pid {} and its mount namespace; give the pid of the container's init",
            point.pid
        ))
    })?;
    let mount_id = attach_in(host_path, point)?;
    Ok(Attached {
        pid: point.pid,
        start_time,
        mount_ns_dev,
        mount_ns_ino,
        mount_id: Some(mount_id),
    })
}

/// What became of a channel's copy in its container at [`detach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// The container no longer runs (or its pid is another process now): nothing to detach.
    ContainerGone,
    /// The container no longer has the mount: it unmounted it itself.
    NotMounted,
    /// Unmounted where it was attached.
    AtContainerPath,
    /// Unmounted where it had been moved to, not where it was attached.
    Moved(PathBuf),
}

/// Unmounts the channel's copy inside the container (lazily, as the host side is): the mount
/// hostchan attached, found by its id in the container's mount table wherever it is now, and
/// opened without following symlinks to check that it is that very mount before it goes. A
/// record without the id (an older hostchan's) is matched by the channel's tmpfs (`channel_dev`)
/// at the container path. A container that is gone, or whose pid now belongs to another
/// namespace, is not an error.
pub fn detach(attached: &Attached, container_path: &Path, channel_dev: u64) -> Result<Detached> {
    if !attached_container_runs(attached) {
        return Ok(Detached::ContainerGone);
    }
    let fail = |e: Error| {
        e.context(format!(
            "cannot detach the channel at {} in the container of pid {}",
            container_path.display(),
            attached.pid
        ))
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", attached.pid))
        .map_err(|e| fail(e.into()))?;
    let table = MountTable::parse(&mountinfo);
    let found = match attached.mount_id {
        Some(id) => table.by_id(id),
        None => table.by_device_at(channel_dev, container_path),
    };
    let Some(mount) = found else {
        return Ok(Detached::NotMounted);
    };
    let proc_root =
        File::open(format!("/proc/{}/root", attached.pid)).map_err(|e| fail(e.into()))?;
    let mount_ns =
        File::open(format!("/proc/{}/ns/mnt", attached.pid)).map_err(|e| fail(e.into()))?;
    let relative = relative_to_root(&mount.mount_point);
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                unshare(CloneFlags::CLONE_FS).context("leaving the shared fs")?;
                setns(mount_ns.as_fd(), CloneFlags::CLONE_NEWNS)
                    .context("entering its mount namespace")?;
                let target = openat2(
                    &proc_root,
                    path_or_dot(&relative),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT
                        | ResolveFlags::NO_SYMLINKS
                        | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| {
                    Error::from(e).context(format!("opening {}", mount.mount_point.display()))
                })?;
                if mount_id_of(&target)? != mount.id {
                    return Err(Error::runtime(format!(
                        "{} is covered by another mount or was replaced; left the channel's copy as it is",
                        mount.mount_point.display()
                    )));
                }
                // Unmounted through the directory itself, so that no path is resolved again.
                rustix::process::fchdir(&target).context("entering the container path")?;
                rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
                    .context("unmounting")?;
                Ok(())
            })
            .join()
    });
    outcome
        .unwrap_or_else(|_| Err(Error::runtime("the detaching thread panicked")))
        .map_err(fail)?;
    Ok(if mount.mount_point == container_path {
        Detached::AtContainerPath
    } else {
        Detached::Moved(mount.mount_point)
    })
}

/// The kernel's id of the mount `fd` is on (the id /proc/<pid>/mountinfo shows).
fn mount_id_of(fd: &OwnedFd) -> Result<u64> {
    let stat = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .context("looking up the mount id")?;
    Ok(stat.stx_mnt_id)
}

/// One line of a process's /proc/<pid>/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    id: u64,
    /// The file system's device, as `stat` gives it.
    dev: u64,
    /// Where it is mounted, relative to the process's root.
    mount_point: PathBuf,
    fs_type: String,
}

/// A process's mount table, from /proc/<pid>/mountinfo (proc(5)).
#[derive(Debug, Default)]
struct MountTable(Vec<MountEntry>);

impl MountTable {
    fn parse(text: &str) -> MountTable {
        MountTable(text.lines().filter_map(MountEntry::parse).collect())
    }

    fn by_id(&self, id: u64) -> Option<MountEntry> {
        self.0.iter().find(|m| m.id == id).cloned()
    }

    /// The topmost mount of this file system at this path.
    fn by_device_at(&self, dev: u64, mount_point: &Path) -> Option<MountEntry> {
        self.0
            .iter()
            .rev()
            .find(|m| m.dev == dev && m.mount_point == mount_point)
            .cloned()
    }

    fn fs_type(&self, id: u64) -> Option<&str> {
        self.0
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.fs_type.as_str())
    }
}

impl MountEntry {
    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
    fn parse(line: &str) -> Option<MountEntry> {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fields = mount.split(' ');
        let id = fields.next()?.parse().ok()?;
        let _parent = fields.next()?;
        let (major, minor) = fields.next()?.split_once(':')?;
        let _root = fields.next()?;
        let mount_point = PathBuf::from(unescape_octal(fields.next()?));
        Some(MountEntry {
            id,
            dev: rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?),
            mount_point,
            fs_type: fs.split(' ').next()?.to_owned(),
        })
    }
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(text: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn path_or_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

fn attach_in(host_path: &Path, point: &AttachPoint<'_>) -> Result<u64> {
    attach_clone(host_path, point).with_context(|| {
        format!(
            "cannot attach channel {} at {} in the container of pid {}",
            host_path.display(),
            point.container_path.display(),
            point.pid
        )
    })
}

fn attach_clone(host_path: &Path, point: &AttachPoint<'_>) -> Result<u64> {
    let tree = open_tree(
        CWD,
        host_path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .context("cloning the host mount")?;
    set_clone_attributes(&tree, point.access == Access::Ro)
        .context("making the clone private (and read-only for ro)")?;
    // Both are opened before entering the namespace: afterwards /proc is the container's view.
    let proc_root = File::open(format!("/proc/{}/root", point.pid)).context("opening its root")?;
    let mount_ns =
        File::open(format!("/proc/{}/ns/mnt", point.pid)).context("opening its mount namespace")?;
    let proc_dir: OwnedFd = File::open(format!("/proc/{}", point.pid))
        .context("opening its /proc directory")?
        .into();
    let mount_id = mount_id_of(&tree)?;
    let container_root = container_root_uid(point.pid);

    let rootfs = point.rootfs.map(relative_to_root);
    let container_path = relative_to_root(point.container_path);
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<u64> {
                // setns(CLONE_NEWNS) refuses a thread that shares its fs_struct; this thread
                // stops sharing it, and ends with the namespace it entered.
                unshare(CloneFlags::CLONE_FS).context("leaving the shared fs")?;
                setns(mount_ns.as_fd(), CloneFlags::CLONE_NEWNS)
                    .context("entering its mount namespace")?;
                let root = match &rootfs {
                    Some(rootfs) => open_in_root(proc_root.as_fd(), rootfs)
                        .context("opening the container's rootfs")?,
                    None => open_in_root(proc_root.as_fd(), Path::new(""))
                        .context("opening the container's root")?,
                };
                let guard = Guard {
                    container_root,
                    proc_dir: &proc_dir,
                    mounts: OnceCell::new(),
                };
                let target = resolve_in_container(&root, &container_path, &guard)
                    .context("resolving the container path")?;
                move_mount(
                    tree.as_fd(),
                    "",
                    target.as_fd(),
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .context("mounting")?;
                Ok(mount_id)
            })
            .join()
    });
    outcome.unwrap_or_else(|_| Err(Error::runtime("the attaching thread panicked")))
}

/// Refuses a process that shares hostchan's mount namespace: it is on the host, not in a
/// container, and its "container path" would be a host path.
pub fn check_other_mount_namespace(pid: i32) -> Result<()> {
    let identity = |path: &str| -> Result<(u64, u64)> {
        let stat = rustix::fs::stat(path).map_err(|e| {
            Error::owner(format!(
                "pid {pid} cannot be looked at ({path}); give the pid of the container's init"
            ))
            .caused_by(e)
        })?;
        Ok((stat.st_dev, stat.st_ino))
    };
    let theirs = identity(&format!("/proc/{pid}/ns/mnt"))?;
    if theirs == identity("/proc/self/ns/mnt")? {
        return Err(Error::owner(format!(
            "pid {pid} shares the host's mount namespace, so it is in no container; --pid attaches only inside a container"
        )));
    }
    Ok(())
}

/// Refuses to attach a channel read-only in a container with a user namespace of its own. The
/// kernel locks the read-only flag (MNT_LOCK_READONLY) only of mounts a less privileged mount
/// namespace inherits when it is made; a mount moved into a namespace that the container's
/// user namespace owns is not locked, and the container's root (CAP_SYS_ADMIN there) could
/// `mount -o remount,rw,bind` it and write into the host's channel.
pub fn check_read_only_holds(pid: i32, spec: &ChannelSpec) -> Result<()> {
    if spec.access != Access::Ro {
        return Ok(());
    }
    let user_ns = |path: &str| -> Result<(u64, u64)> {
        let stat = rustix::fs::stat(path)
            .map_err(|e| Error::owner(format!("cannot look at {path}")).caused_by(e))?;
        Ok((stat.st_dev, stat.st_ino))
    };
    if user_ns(&format!("/proc/{pid}/ns/user"))? == user_ns("/proc/self/ns/user")? {
        return Ok(());
    }
    Err(Error::invalid(
        "access",
        format!("{}:{}:ro", spec.host_path.display(), spec.container_path.display()),
        format!(
            "the container of pid {pid} has a user namespace of its own, whose root could make a channel attached from outside writable again (the kernel does not lock it); give it rw access in this container"
        ),
    ))
}

/// `/a/b` -> `a/b`: paths are resolved relative to a root directory file descriptor.
fn relative_to_root(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Opens a directory below `root` as if `root` were `/`: absolute symlinks and `..` stay inside
/// it (RESOLVE_IN_ROOT), and /proc magic links are refused.
fn open_in_root(root: impl AsFd, path: &Path) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    Ok(openat2(
        root,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// File systems the kernel provides for its own interfaces (linux/magic.h): a channel over one
/// of them would let host users write what the container reads as the kernel's (the class of
/// runc's CVE-2019-19921), or hide what the runtime put there.
const KERNEL_FILESYSTEMS: &[(u32, &str)] = &[
    (0x0000_9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2"),
    (0x7363_6673, "securityfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpf"),
    (0x1980_0202, "mqueue"),
    (0x0000_1cd1, "devpts"),
    (0x6265_6570, "configfs"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6e73_6673, "nsfs"),
];
/// devtmpfs reports tmpfs's magic; the mount table tells them apart.
const TMPFS_MAGIC: u32 = 0x0102_1994;

/// What a resolution checks of every directory it passes through.
struct Guard<'a> {
    /// The host uid the container's root is mapped to, when its user namespace has one of its
    /// own: the container's own directories are as much its own as root's.
    container_root: Option<u32>,
    /// The container process's /proc directory, opened from the host: its mountinfo says which
    /// file system a tmpfs-looking mount really is.
    proc_dir: &'a OwnedFd,
    mounts: OnceCell<MountTable>,
}

/// Who can rename or remove the entries of a directory, and so move a mount point in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Only root (or the container's own root) can change it: any entry may hold a mount.
    Trusted,
    /// Others can add entries, but the sticky bit keeps them from renaming or removing an entry
    /// they do not own: an entry root (or the container's root) owns may hold a mount.
    Sticky,
    /// Someone else can rename any entry: nothing in it may hold a mount.
    Others { uid: u32, mode: u32 },
}

impl Guard<'_> {
    fn trusts(&self, uid: u32) -> bool {
        uid == 0 || Some(uid) == self.container_root
    }

    fn holder(&self, dir: &OwnedFd) -> Result<Holder> {
        let stat = rustix::fs::fstat(dir).context("looking at a directory on the way")?;
        let others_write = stat.st_mode & 0o022 != 0;
        Ok(match (self.trusts(stat.st_uid), others_write) {
            (true, false) => Holder::Trusted,
            (true, true) if stat.st_mode & 0o1000 != 0 => Holder::Sticky,
            _ => Holder::Others {
                uid: stat.st_uid,
                mode: stat.st_mode & 0o7777,
            },
        })
    }

    /// Refuses a directory on a kernel file system, however it was reached (a symlink or a
    /// bind mount in the image).
    fn check_filesystem(&self, dir: &OwnedFd, shown: &Path) -> Result<()> {
        let magic = rustix::fs::fstatfs(dir)
            .context("looking at a directory's file system")?
            .f_type as u32;
        let kind = match KERNEL_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
            Some((_, name)) => Some(*name),
            None if magic == TMPFS_MAGIC => {
                let id = mount_id_of(dir)?;
                let mounts = self.mounts.get_or_init(|| {
                    rustix::fs::openat(
                        self.proc_dir,
                        "mountinfo",
                        OFlags::RDONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .ok()
                    .and_then(|fd| io::read_to_string(File::from(fd)).ok())
                    .map(|text| MountTable::parse(&text))
                    .unwrap_or_default()
                });
                (mounts.fs_type(id) == Some("devtmpfs")).then_some("devtmpfs")
            }
            None => None,
        };
        match kind {
            None => Ok(()),
            Some(kind) => Err(Error::invalid(
                "container path",
                shown.display().to_string(),
                format!(
                    "lies on {kind} in the container, a kernel file system a channel is never mounted in or over; choose another path"
                ),
            )),
        }
    }

    /// Checks an entry found in a directory with this holder: it may hold a mount only where
    /// nobody but root and the container can rename or remove it.
    fn check_entry(&self, holder: Holder, entry: &OwnedFd, shown: &Path) -> Result<()> {
        match holder {
            Holder::Trusted => Ok(()),
            Holder::Sticky => {
                let owner = rustix::fs::fstat(entry)
                    .context("looking at a directory on the way")?
                    .st_uid;
                if self.trusts(owner) {
                    return Ok(());
                }
                Err(Error::runtime(format!(
                    "{} was made by uid {owner} in a directory others can write, who could rename or remove it and take a channel mounted there along; a channel is only mounted where root alone can move it (hostchan makes missing directories itself)",
                    shown.display()
                )))
            }
            Holder::Others { .. } => Err(self.refusal(holder, shown)),
        }
    }

    fn refusal(&self, holder: Holder, shown: &Path) -> Error {
        let parent = shown.parent().unwrap_or(Path::new("/"));
        let who = match holder {
            Holder::Others { uid, mode } if !self.trusts(uid) => {
                format!("is owned by uid {uid} (mode {mode:o})")
            }
            Holder::Others { mode, .. } => {
                format!("can be written by others and has no sticky bit (mode {mode:o})")
            }
            _ => "can be changed by others".to_owned(),
        };
        Error::runtime(format!(
            "{} {who}, so its entries can be renamed or removed by others, which would take a channel mounted in it along; choose a container path whose directories only root can change",
            parent.display()
        ))
    }
}

/// The host uid a process's user namespace maps its root to, when that is not root.
fn container_root_uid(pid: i32) -> Option<u32> {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    map.lines()
        .find_map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            match fields[..] {
                [0, outside, count] if count > 0 => u32::try_from(outside).ok(),
                _ => None,
            }
        })
        .filter(|&uid| uid != 0)
}

/// Resolves `path` below the container's `root` one component at a time, making missing
/// directories (mode 0755). A symlink on the way is followed only where root alone can have put
/// it: in a directory that root owns and nobody else can write (the image's `/var/run -> /run`,
/// say), and then inside the container's root (absolute targets and `..` stay below it). In any
/// other directory (a channel, mode 1777 and writable by every host user; a user-namespaced
/// container's own directories) a symlink is refused, so that no one but root can send a
/// channel anywhere but the container path asked for. Directories are only made for the path's
/// own components, never where a symlink's target leads. Every directory on the way is checked
/// by the guard: no kernel file system, and no entry that someone else could move.
fn resolve_in_container(root: &OwnedFd, path: &Path, guard: &Guard<'_>) -> Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let mut pending: VecDeque<(OsString, bool)> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some((name.to_owned(), true)),
            _ => None,
        })
        .collect();
    let open_root = || open_in_root(root, Path::new(""));
    let mut dir = open_root()?;
    // The directories above `dir`, for `..` in a symlink's target.
    let mut above: Vec<OwnedFd> = Vec::new();
    let mut walked = PathBuf::from("/");
    guard.check_filesystem(&dir, &walked)?;
    let mut links = 0;
    // The last symlink followed, which a missing target is reported by.
    let mut last_link = PathBuf::new();
    while let Some((name, may_create)) = pending.pop_front() {
        if name == "." {
            continue;
        }
        if name == ".." {
            if let Some(parent) = above.pop() {
                dir = parent;
                walked.pop();
            }
            continue;
        }
        let shown = walked.join(&name);
        let holder = guard.holder(&dir)?;
        match open_one(&dir, &name) {
            Ok(next) => {
                guard.check_filesystem(&next, &shown)?;
                guard.check_entry(holder, &next, &shown)?;
                above.push(std::mem::replace(&mut dir, next));
                walked = shown;
            }
            Err(rustix::io::Errno::NOENT) if may_create => {
                if let Holder::Others { .. } = holder {
                    return Err(guard.refusal(holder, &shown));
                }
                match mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => {
                        return Err(Error::from(e).context(format!("making {}", shown.display())))
                    }
                }
                // Opened anew, never followed: someone may have put a symlink there meanwhile.
                pending.push_front((name, false));
            }
            Err(rustix::io::Errno::NOENT) => {
                return Err(Error::runtime(format!(
                    "{} is a symlink whose target does not exist inside the container",
                    last_link.display()
                )))
            }
            Err(rustix::io::Errno::LOOP) => {
                if !only_root_can_write(&dir)? {
                    return Err(Error::runtime(format!(
                        "{} is a symlink in a directory that others than root can write; a channel is never attached through it",
                        shown.display()
                    )));
                }
                links += 1;
                last_link = shown.clone();
                if links > 40 {
                    return Err(Error::runtime(format!(
                        "{} leads through more than 40 symlinks",
                        shown.display()
                    )));
                }
                let target = PathBuf::from(
                    rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())?
                        .into_string()
                        .map_err(|_| {
                            Error::runtime(format!(
                                "{} is a symlink to a non-UTF-8 path",
                                shown.display()
                            ))
                        })?,
                );
                if target.is_absolute() {
                    dir = open_root()?;
                    above.clear();
                    walked = PathBuf::from("/");
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(part) => pending.push_front((part.to_owned(), false)),
                        Component::ParentDir => pending.push_front(("..".into(), false)),
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(Error::from(e).context(shown.display().to_string())),
        }
    }
    Ok(dir)
}

/// One directory below `dir`, never through a symlink (ELOOP when `name` is one).
fn open_one(dir: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<OwnedFd> {
    openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
    )
}

/// Owned by root and writable by nobody else: what is in it, root put there.
fn only_root_can_write(dir: &OwnedFd) -> Result<bool> {
    let stat = rustix::fs::fstat(dir).context("looking at a directory on the way")?;
    Ok(stat.st_uid == 0 && stat.st_mode & 0o022 == 0)
}

/// mount_setattr(2) on the detached clone, which neither nix nor rustix has: private
/// propagation always (a clone of the host mount is otherwise its peer, so a container with
/// CAP_SYS_ADMIN that mounts under its channel would mount on the host too), and read-only for
/// `ro`.
#[allow(unsafe_code)]
fn set_clone_attributes(tree: &OwnedFd, read_only: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: the path is a valid NUL-terminated string, `attr` lives across the call and its
    // size is passed, as mount_setattr(2) requires; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_named_by_pid_and_start_time() {
        let me = std::process::id() as i32;
        let start = start_time_of(me).expect("our own start time");
        assert!(start > 0);
        let (_, dev, ino) = identity_of(me).unwrap();
        let attached = Attached {
            pid: me,
            start_time: start,
            mount_ns_dev: dev,
            mount_ns_ino: ino,
            mount_id: None,
        };
        assert!(is_attached_in(&attached, me));
        // Another process that got the same pid (or namespace inode) later is not this one.
        let later = Attached {
            start_time: start + 1,
            ..attached.clone()
        };
        assert!(!is_attached_in(&later, me));
        assert!(!is_attached_in(&attached, 1));
    }

    fn guard(proc_dir: &OwnedFd, container_root: Option<u32>) -> Guard<'_> {
        Guard {
            container_root,
            proc_dir,
            mounts: OnceCell::new(),
        }
    }

    fn proc_self() -> OwnedFd {
        File::open("/proc/self").unwrap().into()
    }

    /// The container path is resolved component by component: root's symlinks are followed
    /// inside the container's root, anyone else's (in a channel, mode 1777) never.
    #[test]
    fn symlinks_are_followed_only_where_root_alone_can_write() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let scratch = crate::test_scratch::Scratch::new("inject-resolve");
        let root_dir = &scratch.0;
        std::fs::create_dir_all(root_dir.join("real/data")).unwrap();
        std::fs::create_dir_all(root_dir.join("etc")).unwrap();
        symlink("/real", root_dir.join("link")).unwrap();
        symlink("../../../../real", root_dir.join("up")).unwrap();
        symlink("/nowhere", root_dir.join("dangling")).unwrap();
        std::fs::create_dir(root_dir.join("chan")).unwrap();
        std::fs::set_permissions(
            root_dir.join("chan"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        symlink("/etc", root_dir.join("chan/sub")).unwrap();
        let root: OwnedFd = File::open(root_dir).unwrap().into();
        let proc_dir = proc_self();
        let guard = guard(&proc_dir, None);
        let resolve = |path: &str| resolve_in_container(&root, Path::new(path), &guard);
        let ino = |fd: &OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        let real = ino(&resolve("real/data").unwrap());
        assert_eq!(ino(&resolve("link/data").unwrap()), real);
        assert_eq!(ino(&resolve("up/data").unwrap()), real);
        let refused = resolve("chan/sub/x").unwrap_err().to_string();
        assert!(
            refused
                .contains("/chan/sub is a symlink in a directory that others than root can write"),
            "{refused}"
        );
        assert!(!root_dir.join("etc/x").exists());
        let dangling = resolve("dangling/x").unwrap_err().to_string();
        assert!(
            dangling.contains("is a symlink whose target does not exist inside the container"),
            "{dangling}"
        );
        assert!(!root_dir.join("nowhere").exists());
        // Made where missing, in a channel too, and never followed after being made.
        resolve("chan/inner/deeper").unwrap();
        assert!(root_dir.join("chan/inner/deeper").is_dir());
    }

    /// A mount point lies only where nobody but root (and the container's own root) can rename
    /// or remove it: in a sticky directory others can write, an entry someone else made is
    /// refused, one hostchan makes is not; in a directory someone else owns, or others can write
    /// without the sticky bit, nothing is.
    #[test]
    fn mount_points_are_only_where_root_alone_can_move_them() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = crate::test_scratch::Scratch::new("inject-holders");
        let root_dir = &scratch.0;
        let mode = |path: &str, mode: u32| {
            std::fs::set_permissions(root_dir.join(path), std::fs::Permissions::from_mode(mode))
                .unwrap()
        };
        let owner = |path: &str, uid: u32| {
            std::os::unix::fs::chown(root_dir.join(path), Some(uid), Some(uid)).unwrap()
        };
        for dir in ["chan/planted", "chan/roots", "theirs/x", "open"] {
            std::fs::create_dir_all(root_dir.join(dir)).unwrap();
        }
        mode("chan", 0o1777);
        owner("chan/planted", 65534);
        owner("theirs", 100_000);
        mode("open", 0o777);
        let root: OwnedFd = File::open(root_dir).unwrap().into();
        let proc_dir = proc_self();
        let plain = guard(&proc_dir, None);
        let resolve = |guard: &Guard<'_>, path: &str| {
            resolve_in_container(&root, Path::new(path), guard).map_err(|e| e.to_string())
        };
        let planted = resolve(&plain, "chan/planted").unwrap_err();
        assert!(
            planted.contains("/chan/planted was made by uid 65534 in a directory others can write"),
            "{planted}"
        );
        let below = resolve(&plain, "chan/planted/inner").unwrap_err();
        assert!(
            below.contains("/chan/planted was made by uid 65534"),
            "{below}"
        );
        assert!(!root_dir.join("chan/planted/inner").exists());
        resolve(&plain, "chan/roots").unwrap();
        resolve(&plain, "chan/fresh/deeper").unwrap();
        let fresh = std::fs::metadata(root_dir.join("chan/fresh")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&fresh), 0);
        let theirs = resolve(&plain, "theirs/x").unwrap_err();
        assert!(
            theirs.contains("/theirs is owned by uid 100000 (mode 755)"),
            "{theirs}"
        );
        let missing = resolve(&plain, "theirs/new").unwrap_err();
        assert!(
            missing.contains("/theirs is owned by uid 100000"),
            "{missing}"
        );
        assert!(!root_dir.join("theirs/new").exists());
        let open = resolve(&plain, "open/x").unwrap_err();
        assert!(open.contains("has no sticky bit (mode 777)"), "{open}");
        assert!(!root_dir.join("open/x").exists());
        // A user-namespaced container's own directories are its own.
        resolve(&guard(&proc_dir, Some(100_000)), "theirs/x").unwrap();
    }

    /// However it is reached, a kernel file system never holds a channel.
    #[test]
    fn kernel_file_systems_are_refused_however_reached() {
        let root: OwnedFd = File::open("/").unwrap().into();
        let proc_dir = proc_self();
        let guard = guard(&proc_dir, None);
        for (path, kind) in [("proc/sys/kernel", "procfs"), ("sys/kernel", "sysfs")] {
            let err = resolve_in_container(&root, Path::new(path), &guard).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{path}: {err}");
            assert!(
                err.to_string().contains(&format!("lies on {kind}")),
                "{err}"
            );
        }
    }

    #[test]
    fn mount_tables() {
        let table = MountTable::parse(concat!(
            "22 1 0:21 / /dev rw,nosuid - devtmpfs udev rw,size=100k\n",
            "23 22 0:22 / /dev/shm rw - tmpfs tmpfs rw\n",
            "36 35 98:0 /mnt1 /a\\040b\\134c rw,noatime master:1 shared:2 - ext3 /dev/root rw\n",
            "garbage\n",
        ));
        assert_eq!(table.fs_type(22), Some("devtmpfs"));
        assert_eq!(table.fs_type(23), Some("tmpfs"));
        assert_eq!(table.fs_type(99), None);
        let odd = table.by_id(36).unwrap();
        assert_eq!(odd.mount_point, Path::new("/a b\\c"));
        assert_eq!(odd.dev, rustix::fs::makedev(98, 0));
        assert_eq!(
            table
                .by_device_at(rustix::fs::makedev(0, 22), Path::new("/dev/shm"))
                .map(|m| m.id),
            Some(23)
        );
        assert!(table
            .by_device_at(rustix::fs::makedev(0, 22), Path::new("/dev"))
            .is_none());
    }

    #[test]
    fn paths_relative_to_root() {
        assert_eq!(relative_to_root(Path::new("/a/b")), PathBuf::from("a/b"));
        assert_eq!(relative_to_root(Path::new("/")), PathBuf::new());
    }
}
