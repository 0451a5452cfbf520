//! Everything hostchan does on the host path itself: checking that it is free, finding out
//! whether it is mounted and how full it is, and removing the directories made for it.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};

/// Checks on disk that the host path is free: nothing exists there (not even a dangling
/// symlink), no existing ancestor is a symlink, and every existing ancestor is a directory.
/// Returns the highest directory that mounting will create (the path itself when its parent
/// exists): cleanup removes the empty directories up to it and no further.
pub fn check_free(path: &Path) -> Result<PathBuf> {
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let kind = if meta.file_type().is_symlink() {
                "a symlink"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "a file"
            };
            return Err(Error::invalid(
                "host path",
                shown,
                format!("already exists ({kind}); a channel needs a path that does not exist yet"),
            ));
        }
        // ENOTDIR: an ancestor is a file; the walk below names it.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => {
            return Err(Error::invalid(
                "host path",
                shown,
                format!("cannot be checked: {e}"),
            ))
        }
    }
    let mut highest_new = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        match std::fs::symlink_metadata(ancestor) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::invalid(
                    "host path",
                    shown,
                    format!(
                        "has a symlink as ancestor ({}); give the resolved path",
                        ancestor.display()
                    ),
                ))
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::invalid(
                    "host path",
                    shown,
                    format!(
                        "has an ancestor that is not a directory ({})",
                        ancestor.display()
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => highest_new = ancestor.to_path_buf(),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {}
            Err(e) => {
                return Err(Error::invalid(
                    "host path",
                    shown,
                    format!("cannot check its ancestor {}: {e}", ancestor.display()),
                ))
            }
        }
    }
    Ok(highest_new)
}

/// Whether `path` is the root of a mount; a missing path is not.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(stat)
            if stat
                .stx_attributes_mask
                .contains(StatxAttributes::MOUNT_ROOT) =>
        {
            Ok(stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        // Kernels before 5.8 do not say; a different device than the parent's is a mount.
        Ok(stat) => {
            use std::os::unix::fs::MetadataExt;
            let parent = path.parent().unwrap_or(Path::new("/"));
            let parent_dev = std::fs::symlink_metadata(parent)
                .with_context(|| format!("cannot look at {}", parent.display()))?
                .dev();
            Ok(
                nix::sys::stat::makedev(stat.stx_dev_major.into(), stat.stx_dev_minor.into())
                    != parent_dev,
            )
        }
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(false),
        Err(e) => Err(Error::io(format!("cannot look at {}", path.display()), e)),
    }
}

/// Removes a channel's directory while it is empty (an unmounted channel's is; `rmdir` refuses
/// anything else, mount points included); `false` when there was none.
pub fn remove_channel_dir(host_path: &Path) -> Result<bool> {
    // Looked up first: rmdir reports EROFS rather than ENOENT on a read-only file system.
    let exists = std::fs::symlink_metadata(host_path).is_ok();
    match exists.then(|| std::fs::remove_dir(host_path)) {
        None => Ok(false),
        Some(Ok(())) => Ok(true),
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Some(Err(e)) => Err(Error::io(
            format!(
                "cannot remove channel directory {} (kept it and its record)",
                host_path.display()
            ),
            e,
        )),
    }
}

/// Removes the parents of `host_path` up to `new_dirs_from` while they are empty; a parent
/// that another channel or anyone else uses stays.
pub fn remove_new_parents(host_path: &Path, new_dirs_from: &Path) {
    if !host_path.starts_with(new_dirs_from) {
        return;
    }
    for parent in host_path.ancestors().skip(1) {
        if !parent.starts_with(new_dirs_from) || std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
}

/// Bytes in use on the file system at `path`.
pub fn used_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks = stat.blocks().saturating_sub(stat.blocks_free());
    Some(blocks * stat.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_on_disk() {
        let dir = std::env::temp_dir().join(format!("hostchan-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cleanup = Cleanup(dir.clone());
        assert_eq!(check_free(&dir.join("free")).unwrap(), dir.join("free"));
        assert_eq!(
            check_free(&dir.join("free/deeper/still")).unwrap(),
            dir.join("free")
        );
        let err = check_free(&dir).unwrap_err().to_string();
        assert!(err.contains("already exists (a directory)"), "{err}");
        std::fs::write(dir.join("file"), "").unwrap();
        let err = check_free(&dir.join("file")).unwrap_err().to_string();
        assert!(err.contains("already exists (a file)"), "{err}");
        let err = check_free(&dir.join("file/x")).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::os::unix::fs::symlink("/nonexistent-target", dir.join("dangling")).unwrap();
        let err = check_free(&dir.join("dangling")).unwrap_err().to_string();
        assert!(err.contains("already exists (a symlink)"), "{err}");
        std::os::unix::fs::symlink(&dir, dir.join("link")).unwrap();
        let err = check_free(&dir.join("link/x")).unwrap_err().to_string();
        assert!(err.contains("has a symlink as ancestor"), "{err}");
        drop(cleanup);
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
