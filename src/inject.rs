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
                let root = open_in_root(proc_root.as_fd(), Path::new(""))
                    .context("opening the container's root")?;
                let target = match resolve_in_container(&root, &relative, false) {
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
                let target = resolve_in_container(&root, &container_path, true)
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

/// Resolves `path` below the container's `root` one component at a time, making missing
/// directories (mode 0755) when `create` is set. A symlink on the way is followed only where
/// root alone can have put it: in a directory that root owns and nobody else can write (the
/// image's `/var/run -> /run`, say), and then inside the container's root (absolute targets
/// and `..` stay below it). In any other directory (a channel, mode 1777 and writable by every
/// host user; a user-namespaced container's own directories) a symlink is refused, so that no
/// one but root can send a channel anywhere but the container path asked for. Directories are
/// only made for the path's own components, never where a symlink's target leads.
fn resolve_in_container(root: &OwnedFd, path: &Path, create: bool) -> io::Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let mut pending: VecDeque<(OsString, bool)> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some((name.to_owned(), create)),
            _ => None,
        })
        .collect();
    let open_root = || open_in_root(root, Path::new(""));
    let mut dir = open_root()?;
    // The directories above `dir`, for `..` in a symlink's target.
    let mut above: Vec<OwnedFd> = Vec::new();
    let mut walked = PathBuf::from("/");
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
        match open_one(&dir, &name) {
            Ok(next) => {
                above.push(std::mem::replace(&mut dir, next));
                walked.push(&name);
            }
            Err(rustix::io::Errno::NOENT) if may_create => {
                match mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                // Opened anew, never followed: someone may have put a symlink there meanwhile.
                pending.push_front((name, false));
            }
            Err(rustix::io::Errno::NOENT) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} is a symlink whose target does not exist inside the container",
                        last_link.display()
                    ),
                ))
            }
            Err(rustix::io::Errno::LOOP) => {
                let shown = walked.join(&name);
                if !only_root_can_write(&dir)? {
                    return Err(io::Error::other(format!(
                        "{} is a symlink in a directory that others than root can write; a channel is never attached through it",
                        shown.display()
                    )));
                }
                links += 1;
                last_link = shown.clone();
                if links > 40 {
                    return Err(io::Error::other(format!(
                        "{} leads through more than 40 symlinks",
                        shown.display()
                    )));
                }
                let target = PathBuf::from(
                    rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())?
                        .into_string()
                        .map_err(|_| {
                            io::Error::other(format!(
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
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", walked.join(&name).display()),
                ))
            }
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
fn only_root_can_write(dir: &OwnedFd) -> io::Result<bool> {
    let stat = rustix::fs::fstat(dir)?;
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
        let ino = |fd: &OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        let real = ino(&resolve_in_container(&root, Path::new("real/data"), false).unwrap());
        assert_eq!(
            ino(&resolve_in_container(&root, Path::new("link/data"), false).unwrap()),
            real
        );
        assert_eq!(
            ino(&resolve_in_container(&root, Path::new("up/data"), false).unwrap()),
            real
        );
        let refused = resolve_in_container(&root, Path::new("chan/sub/x"), true)
            .unwrap_err()
            .to_string();
        assert!(
            refused
                .contains("/chan/sub is a symlink in a directory that others than root can write"),
            "{refused}"
        );
        assert!(!root_dir.join("etc/x").exists());
        let dangling = resolve_in_container(&root, Path::new("dangling/x"), true)
            .unwrap_err()
            .to_string();
        assert!(
            dangling.contains("is a symlink whose target does not exist inside the container"),
            "{dangling}"
        );
        assert!(!root_dir.join("nowhere").exists());
        // Made where missing, in a channel too, and never followed after being made.
        resolve_in_container(&root, Path::new("chan/inner/deeper"), true).unwrap();
        assert!(root_dir.join("chan/inner/deeper").is_dir());
    }

    #[test]
    fn paths_relative_to_root() {
        assert_eq!(relative_to_root(Path::new("/a/b")), PathBuf::from("a/b"));
        assert_eq!(relative_to_root(Path::new("/")), PathBuf::new());
    }
}
