//! Resolving a container path below the container's root, one component at a time, and what
//! is checked of every directory on the way: symlinks only where root alone can have put them,
//! never a kernel file system (procfs, sysfs, ...), and, past a directory others can write,
//! only entries nobody else can rename (a mount point someone else can move or remove would
//! take the channel with it).

use std::cell::OnceCell;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{mkdirat, openat2, Mode, OFlags, ResolveFlags};

use super::mount_table::{mount_id_of, MountTable};
use super::open_in_root;
use crate::error::{Context, Error, Result};

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
pub(super) struct Guard<'a> {
    /// The host uid the container's root is mapped to, when its user namespace has one of its
    /// own: the container's own directories are as much its own as root's.
    pub(super) container_root: Option<u32>,
    /// The container process's /proc directory, opened from the host: its mountinfo says which
    /// file system a tmpfs-looking mount really is.
    pub(super) proc_dir: &'a OwnedFd,
    pub(super) mounts: OnceCell<MountTable>,
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

/// Resolves `path` below the container's `root` one component at a time, making missing
/// directories (mode 0755). A symlink on the way is followed only where root alone can have put
/// it: in a directory that root owns and nobody else can write (the image's `/var/run -> /run`,
/// say), and then inside the container's root (absolute targets and `..` stay below it). In any
/// other directory (a channel, mode 1777 and writable by every host user; a user-namespaced
/// container's own directories) a symlink is refused, so that no one but root can send a
/// channel anywhere but the container path asked for. Directories are only made for the path's
/// own components, never where a symlink's target leads. Every directory on the way is checked
/// by the guard: no kernel file system, and no entry that someone else could move.
pub(super) fn resolve_in_container(
    root: &OwnedFd,
    path: &Path,
    guard: &Guard<'_>,
) -> Result<OwnedFd> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
