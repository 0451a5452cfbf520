//! Attaching a channel inside a container's mount namespace, with the new mount API: clone the
//! host mount, make the clone read-only for `ro`, enter the container's mount namespace from a
//! thread of its own, resolve the container path inside the container's root ([`resolve`]),
//! and move the clone there. Detaching acts on the mount attached, by the kernel's id for it,
//! wherever it is now ([`mount_table`]). The container's process is held by a descriptor of its
//! /proc directory from the first look to the last, so that a pid used again meanwhile is never
//! taken for it.

mod mount_table;
mod resolve;

use std::cell::OnceCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use rustix::fs::{openat, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use crate::error::{Context, Error, Result};
use crate::model::Attached;
use crate::spec::{Access, ChannelSpec, RootOwner};
use mount_table::{mount_id_of, MountTable};
use resolve::{resolve_in_container, Guard};

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

/// A process, held by a descriptor of its /proc directory: whatever is opened or read through
/// it is that process's, and fails once it is gone, even if its pid is used again.
struct Process {
    dir: OwnedFd,
}

/// The start time and mount namespace (device, inode) that name a process for good.
type Identity = (u64, u64, u64);

impl Process {
    fn open(pid: i32) -> io::Result<Process> {
        let dir = openat(
            CWD,
            format!("/proc/{pid}"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Process { dir })
    }

    /// One of its /proc files, or the namespace or root its magic links lead to.
    fn file(&self, name: &str) -> io::Result<File> {
        Ok(openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?
        .into())
    }

    fn read(&self, name: &str) -> io::Result<String> {
        io::read_to_string(self.file(name)?)
    }

    fn identity(&self) -> Option<Identity> {
        let stat = rustix::fs::fstat(self.file("ns/mnt").ok()?).ok()?;
        // Field 22 of stat, after the command name (which may hold spaces and parens).
        let text = self.read("stat").ok()?;
        let after_name = &text[text.rfind(')')? + 1..];
        let start_time = after_name.split_whitespace().nth(19)?.parse().ok()?;
        Some((start_time, stat.st_dev, stat.st_ino))
    }

    /// The host uid and gid its user namespace maps its root (0) to; itself when it has no user
    /// namespace of its own.
    fn root_mapping(&self) -> Option<RootOwner> {
        Some(RootOwner {
            uid: host_id_of_root(&self.read("uid_map").ok()?)?,
            gid: host_id_of_root(&self.read("gid_map").ok()?)?,
        })
    }
}

/// The host uid and gid that a process's user namespace maps its root (0) to; itself when the
/// process has no user namespace of its own.
pub fn root_mapping_of(pid: i32) -> Option<RootOwner> {
    Process::open(pid).ok()?.root_mapping()
}

/// The host id that id 0 maps to in a `/proc/<pid>/[ug]id_map` text.
fn host_id_of_root(map: &str) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        (inside == 0 && count > 0)
            .then(|| u32::try_from(outside).ok())
            .flatten()
    })
}

fn identity_of_attached(attached: &Attached) -> Identity {
    (
        attached.start_time,
        attached.mount_ns_dev,
        attached.mount_ns_ino,
    )
}

/// The process the channel was attached through, if it still runs in the same mount namespace.
fn attached_process(attached: &Attached) -> Option<Process> {
    let process = Process::open(attached.pid).ok()?;
    (process.identity()? == identity_of_attached(attached)).then_some(process)
}

/// Whether the channel is attached in the container `pid` is in now: the very process it was
/// attached through, in the same mount namespace.
pub fn is_attached_in(attached: &Attached, pid: i32) -> bool {
    pid == attached.pid && attached_process(attached).is_some()
}

/// Whether the container the channel was attached in still runs.
pub fn attached_container_runs(attached: &Attached) -> bool {
    attached_process(attached).is_some()
}

/// Attaches the channel and says where, for a later [`detach`].
pub fn attach(host_path: &Path, point: &AttachPoint<'_>) -> Result<Attached> {
    let cannot_look = || {
        Error::owner(format!(
            "cannot look at pid {} and its mount namespace; give the pid of the container's init",
            point.pid
        ))
    };
    let process = Process::open(point.pid).map_err(|e| cannot_look().caused_by(e))?;
    let (start_time, mount_ns_dev, mount_ns_ino) = process.identity().ok_or_else(cannot_look)?;
    let mount_id = attach_in(host_path, &process, point)?;
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
    let Some(process) = attached_process(attached) else {
        return Ok(Detached::ContainerGone);
    };
    let fail = |e: Error| {
        e.context(format!(
            "cannot detach the channel at {} in the container of pid {}",
            container_path.display(),
            attached.pid
        ))
    };
    let mountinfo = process.read("mountinfo").map_err(|e| fail(e.into()))?;
    let table = MountTable::parse(&mountinfo);
    let found = match attached.mount_id {
        Some(id) => table.by_id(id),
        None => table.by_device_at(channel_dev, container_path),
    };
    let Some(mount) = found else {
        return Ok(Detached::NotMounted);
    };
    let proc_root = process.file("root").map_err(|e| fail(e.into()))?;
    let mount_ns = process.file("ns/mnt").map_err(|e| fail(e.into()))?;
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

fn path_or_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

fn attach_in(host_path: &Path, process: &Process, point: &AttachPoint<'_>) -> Result<u64> {
    attach_clone(host_path, process, point).with_context(|| {
        format!(
            "cannot attach channel {} at {} in the container of pid {}",
            host_path.display(),
            point.container_path.display(),
            point.pid
        )
    })
}

fn attach_clone(host_path: &Path, process: &Process, point: &AttachPoint<'_>) -> Result<u64> {
    let tree = open_tree(
        CWD,
        host_path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .context("cloning the host mount")?;
    set_clone_attributes(&tree, point.access == Access::Ro)
        .context("making the clone private (and read-only for ro)")?;
    // Both are opened before entering the namespace: afterwards /proc is the container's view.
    let proc_root = process.file("root").context("opening its root")?;
    let mount_ns = process
        .file("ns/mnt")
        .context("opening its mount namespace")?;
    let mount_id = mount_id_of(&tree)?;
    // Its own directories are the container's as much as root's, when its user namespace maps
    // its root elsewhere.
    let container_root = process
        .root_mapping()
        .map(|root| root.uid)
        .filter(|&uid| uid != 0);

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
                    proc_dir: &process.dir,
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
/// Whether mounts made at each of `host_paths` reach a container that bound the directory
/// before them (by propagation, with `rslave`): the mount that holds each directory is shared.
/// The mount table is read once for all of them.
pub fn mounts_reach_bound_copies(host_paths: &[&Path]) -> Result<bool> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read the mount table (/proc/self/mountinfo)")?;
    let table = MountTable::parse(&table);
    for host_path in host_paths {
        let dir = crate::hostfs::open_dir_nofollow(host_path.parent().unwrap_or(host_path))
            .with_context(|| format!("cannot look at the parent of {}", host_path.display()))?;
        if !table
            .by_id(mount_id_of(&dir)?)
            .is_some_and(|mount| mount.shared)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the container of process `pid` sees, at `container_path` (resolved inside its root),
/// the file system of `device`: a channel the runtime bound before the tmpfs was mounted has
/// it only once the mount reached the container. A missing path sees nothing.
pub fn sees_device(pid: i32, container_path: &Path, device: u64) -> Result<bool> {
    let shown = || {
        format!(
            "{} in the container of process {pid}",
            container_path.display()
        )
    };
    let process = Process::open(pid).with_context(|| format!("cannot look at process {pid}"))?;
    let root = openat(
        &process.dir,
        "root",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open the root of process {pid}"))?;
    let relative: PathBuf = container_path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let seen = match openat2(
        &root,
        &relative,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(false),
        Err(e) => return Err(Error::from(e).context(shown())),
    };
    let stat = rustix::fs::fstat(&seen).with_context(|| format!("cannot look at {}", shown()))?;
    Ok(stat.st_dev == device)
}

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
        let (start, dev, ino) = Process::open(me).unwrap().identity().unwrap();
        assert!(start > 0);
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

    #[test]
    fn root_maps() {
        assert_eq!(
            host_id_of_root("         0          0 4294967295\n"),
            Some(0)
        );
        assert_eq!(
            host_id_of_root("         0     100000      65536\n"),
            Some(100_000)
        );
        assert_eq!(host_id_of_root("      1000     100000      65536\n"), None);
        assert_eq!(host_id_of_root(""), None);
    }

    #[test]
    fn paths_relative_to_root() {
        assert_eq!(relative_to_root(Path::new("/a/b")), PathBuf::from("a/b"));
        assert_eq!(relative_to_root(Path::new("/")), PathBuf::new());
    }
}
