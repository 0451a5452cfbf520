//! What is mounted at a host path: its device, whether it is a mount point, the mount
//! table's changes, and a channel's usage; every path reached without following symlinks.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, openat2, AtFlags, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

use super::open_dir_nofollow;
use crate::error::{Context, Error, Result};

/// The device of the mount rooted at `path`, or `None` when nothing is mounted there (a
/// missing path, or one with a symlink on its way, is no channel's mount). Looked at from the
/// parent's descriptor, without following symlinks.
pub fn mounted_device(path: &Path) -> Result<Option<u64>> {
    use rustix::fs::{statx, StatxAttributes, StatxFlags};
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let parent = match open_dir_nofollow(parent_path) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => {
            return Err(Error::io(
                format!("cannot look at {}", parent_path.display()),
                e,
            ))
        }
    };
    let stat = match statx(
        &parent,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(stat) => stat,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot look at {}", path.display()), e)),
    };
    let device = nix::sys::stat::makedev(stat.stx_dev_major.into(), stat.stx_dev_minor.into());
    let mounted = if stat
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    } else {
        // Kernels before 5.8 do not say; a different device than the parent's is a mount.
        fstat(&parent)
            .with_context(|| format!("cannot look at {}", parent_path.display()))?
            .st_dev
            != device
    };
    Ok(mounted.then_some(device))
}

/// Whether `path` is the root of a mount; a missing path is not.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mounted_device(path)?.is_some())
}

/// Changes to this process's mount table, as the kernel signals them on `/proc/self/mountinfo`:
/// a wait for an unmount that costs nothing while none comes, and misses none that happens
/// after [`MountChanges::watch`] (the file remembers the table as it was when opened).
pub struct MountChanges {
    mountinfo: OwnedFd,
}

impl MountChanges {
    pub fn watch() -> Result<MountChanges> {
        rustix::fs::open(
            "/proc/self/mountinfo",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(|mountinfo| MountChanges { mountinfo })
        .context("cannot watch the mount table (/proc/self/mountinfo)")
    }

    /// Waits up to `limit` for the mount table to change; whether it did.
    pub fn wait(&mut self, limit: std::time::Duration) -> Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.mountinfo, PollFlags::PRI)];
        let timeout = Timespec::try_from(limit).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => Ok(ready > 0),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(Error::io("cannot wait for the mount table to change", e)),
        }
    }
}

/// Bytes in use on the file system at `path`, reached without symlinks.
pub fn used_bytes(path: &Path) -> Option<u64> {
    Usage::default().used_bytes(path)
}

/// Reads the usage of many channels: the parent directory of the last one is kept open, so
/// that channels side by side (as in `list`, which goes by unit name, so by path) cost one
/// component's lookup each rather than a walk from `/`.
#[derive(Default)]
pub struct Usage {
    parent: Option<(PathBuf, OwnedFd)>,
}

impl Usage {
    /// Bytes in use on the file system at `path`, reached without symlinks; `None` where it
    /// cannot be reached that way.
    pub fn used_bytes(&mut self, path: &Path) -> Option<u64> {
        self.of(path).map(|usage| usage.used_bytes)
    }

    /// Bytes and inodes in use on the file system at `path` (a channel's tmpfs), reached
    /// without symlinks.
    pub fn of(&mut self, path: &Path) -> Option<FsUsage> {
        let (parent_path, name) = (path.parent()?, path.file_name()?);
        let parent = match &self.parent {
            Some((kept, fd)) if kept == parent_path => fd,
            _ => {
                let fd = openat2(
                    CWD,
                    parent_path,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                )
                .ok()?;
                &self.parent.insert((parent_path.to_owned(), fd)).1
            }
        };
        // O_PATH: nothing is read through it. O_NOFOLLOW with O_PATH would open a symlink
        // itself, which O_DIRECTORY then refuses.
        let dir = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let stat = rustix::fs::fstatvfs(dir).ok()?;
        let blocks = stat.f_blocks.saturating_sub(stat.f_bfree);
        Some(FsUsage {
            used_bytes: blocks * stat.f_frsize,
            inodes_used: stat.f_files.saturating_sub(stat.f_ffree),
            inodes_total: stat.f_files,
        })
    }
}

/// What a file system has in use, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
}
