//! A process's mount table (/proc/<pid>/mountinfo) and the kernel's id of a mount: how a
//! channel's copy in a container is found again wherever it is, and how a tmpfs-looking mount
//! is told from devtmpfs.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// The kernel's id of the mount `fd` is on (the id /proc/<pid>/mountinfo shows).
pub(super) fn mount_id_of(fd: &OwnedFd) -> Result<u64> {
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
pub(super) struct MountEntry {
    pub(super) id: u64,
    /// The file system's device, as `stat` gives it.
    pub(super) dev: u64,
    /// Where it is mounted, relative to the process's root.
    pub(super) mount_point: PathBuf,
    pub(super) fs_type: String,
    /// In a peer group (`shared:N`): mounts made below it reach its copies in other
    /// namespaces that are its peers or slaves.
    pub(super) shared: bool,
}

/// A process's mount table, from /proc/<pid>/mountinfo (proc(5)).
#[derive(Debug, Default)]
pub(super) struct MountTable(Vec<MountEntry>);

impl MountTable {
    pub(super) fn parse(text: &str) -> MountTable {
        MountTable(text.lines().filter_map(MountEntry::parse).collect())
    }

    pub(super) fn by_id(&self, id: u64) -> Option<MountEntry> {
        self.0.iter().find(|m| m.id == id).cloned()
    }

    /// The topmost mount of this file system at this path.
    pub(super) fn by_device_at(&self, dev: u64, mount_point: &Path) -> Option<MountEntry> {
        self.0
            .iter()
            .rev()
            .find(|m| m.dev == dev && m.mount_point == mount_point)
            .cloned()
    }

    pub(super) fn fs_type(&self, id: u64) -> Option<&str> {
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
        let _options = fields.next()?;
        let shared = fields.any(|optional| optional.starts_with("shared:"));
        Some(MountEntry {
            id,
            dev: rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?),
            mount_point,
            fs_type: fs.split(' ').next()?.to_owned(),
            shared,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(odd.shared, "master:1 shared:2");
        assert!(!table.by_id(23).unwrap().shared);
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
}
