//! Attaching a channel inside a container's mount namespace, with the new mount API: clone the
//! host mount, make the clone read-only for `ro`, enter the container's mount namespace from a
//! thread of its own, resolve the container path inside the container's root (never outside it,
//! whatever symlinks the rootfs holds), create what is missing, and move the clone there.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use rustix::fs::{mkdirat, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use crate::error::{Context, Error, Result};
use crate::model::Attached;
use crate::spec::Access;

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
    attach_in(host_path, point)?;
    Ok(Attached {
        pid: point.pid,
        start_time,
        mount_ns_dev,
        mount_ns_ino,
    })
}

/// Unmounts the channel's copy inside the container (lazily, as the host side is): the mount
/// at the container path, if it is a mount of the channel's own tmpfs (`channel_dev`). A
/// container that is gone, or whose pid now belongs to another namespace, is not an error.
pub fn detach(attached: &Attached, container_path: &Path, channel_dev: u64) -> Result<bool> {
    if !attached_container_runs(attached) {
        return Ok(false);
    }
    let fail = |e: Error| {
        e.context(format!(
            "cannot detach the channel at {} in the container of pid {}",
            container_path.display(),
            attached.pid
        ))
    };
    let proc_root =
        File::open(format!("/proc/{}/root", attached.pid)).map_err(|e| fail(e.into()))?;
    let mount_ns =
        File::open(format!("/proc/{}/ns/mnt", attached.pid)).map_err(|e| fail(e.into()))?;
    let relative = relative_to_root(container_path);
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<bool> {
                unshare(CloneFlags::CLONE_FS).context("leaving the shared fs")?;
                setns(mount_ns.as_fd(), CloneFlags::CLONE_NEWNS)
                    .context("entering its mount namespace")?;
                let target = match open_in_root(proc_root.as_fd(), &relative) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(Error::from(e).context("resolving the container path")),
                };
                let stat = rustix::fs::fstat(&target).context("looking at the container path")?;
                if stat.st_dev != channel_dev {
                    return Ok(false);
                }
                // Unmounted through the directory itself, so that no path is resolved again.
                rustix::process::fchdir(&target).context("entering the container path")?;
                rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
                    .context("unmounting")?;
                Ok(true)
            })
            .join()
    });
    outcome
        .unwrap_or_else(|_| Err(Error::runtime("the detaching thread panicked")))
        .map_err(fail)
}

fn attach_in(host_path: &Path, point: &AttachPoint<'_>) -> Result<()> {
    attach_clone(host_path, point).with_context(|| {
        format!(
            "cannot attach channel {} at {} in the container of pid {}",
            host_path.display(),
            point.container_path.display(),
            point.pid
        )
    })
}

fn attach_clone(host_path: &Path, point: &AttachPoint<'_>) -> Result<()> {
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

    let rootfs = point.rootfs.map(relative_to_root);
    let container_path = relative_to_root(point.container_path);
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
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
                let target = open_or_create_dirs(&root, &container_path)
                    .context("resolving the container path")?;
                move_mount(
                    tree.as_fd(),
                    "",
                    target.as_fd(),
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .context("mounting")
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

/// Opens `path` below `root`, creating missing directories (mode 0755) one component at a time,
/// each resolved inside `root` before the next is made.
fn open_or_create_dirs(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    let mut parent = PathBuf::new();
    for component in path.components() {
        let current = parent.join(component);
        match open_in_root(root, &current) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent_fd = open_in_root(root, &parent)?;
                match mkdirat(
                    &parent_fd,
                    component.as_os_str(),
                    Mode::from_raw_mode(0o755),
                ) {
                    Ok(()) => {}
                    // A racing mkdir is fine; a symlink that leads nowhere inside the root is
                    // neither followed out of it nor created through.
                    Err(e) if e == rustix::io::Errno::EXIST => {
                        if open_in_root(root, &current).is_err() {
                            return Err(io::Error::other(format!(
                                "{} is a symlink whose target does not exist inside the container",
                                Path::new("/").join(&current).display()
                            )));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
        parent = current;
    }
    open_in_root(root, &parent)
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
    fn paths_relative_to_root() {
        assert_eq!(relative_to_root(Path::new("/a/b")), PathBuf::from("a/b"));
        assert_eq!(relative_to_root(Path::new("/")), PathBuf::new());
    }
}
