//! Emptying a channel's tmpfs in place (`io.hostchan.on-restart=clear`): everything in it was
//! written by a container, so nothing there is trusted. Every step is taken from a directory's
//! descriptor: an entry is looked at without following it, a directory is entered only while it
//! is still the directory just looked at and on the channel's own device, and `unlinkat` never
//! follows a symlink, so that nothing outside the tmpfs can be reached.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{fstat, openat, statat, unlinkat, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Deeper than this the clear refuses rather than holds a descriptor per level.
const MAX_DEPTH: usize = 256;
/// A container still writing may refill what one pass emptied.
const PASSES: usize = 3;

/// Removes everything inside the tmpfs mounted at `path`, which must be a mount root reached
/// without symlinks. The number of entries removed.
pub fn empty_mount(path: &Path) -> Result<u64> {
    let cannot = |e: Errno| Error::io(format!("cannot empty the channel at {}", path.display()), e);
    let Some(device) = super::mounted_device(path)? else {
        return Err(Error::runtime(format!(
            "cannot empty the channel at {}: nothing is mounted there",
            path.display()
        )));
    };
    let root = super::open_dir_nofollow(path).map_err(cannot)?;
    let stat = fstat(&root).map_err(cannot)?;
    if stat.st_dev != device {
        return Err(Error::runtime(format!(
            "cannot empty the channel at {}: it changed while being looked at",
            path.display()
        )));
    }
    let mut removed = 0;
    for _ in 0..PASSES {
        let mut clear = Clear {
            device,
            removed: 0,
            left: 0,
        };
        clear.dir(&root, 0).map_err(|e| match e {
            Stop::Io(e) => cannot(e),
            Stop::TooDeep => Error::runtime(format!(
                "cannot empty the channel at {}: its directories nest deeper than {MAX_DEPTH}",
                path.display()
            )),
            Stop::Mount(name) => Error::runtime(format!(
                "cannot empty the channel at {}: something is mounted at {name} inside it",
                path.display()
            )),
        })?;
        removed += clear.removed;
        if clear.left == 0 {
            return Ok(removed);
        }
    }
    Err(Error::runtime(format!(
        "cannot empty the channel at {}: it was written to faster than it could be emptied",
        path.display()
    )))
}

enum Stop {
    Io(Errno),
    TooDeep,
    Mount(String),
}

impl From<Errno> for Stop {
    fn from(e: Errno) -> Stop {
        Stop::Io(e)
    }
}

struct Clear {
    device: u64,
    removed: u64,
    /// Entries that came back or could not be removed in this pass (a writer at work).
    left: u64,
}

impl Clear {
    fn dir(&mut self, dir: &OwnedFd, depth: usize) -> std::result::Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::TooDeep);
        }
        // Streamed, not gathered first: a container may have left millions of names. Entries
        // removed while the directory is read may make it skip some: the next pass sees them.
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            self.entry(dir, name, depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, name: &CStr, depth: usize) -> std::result::Result<(), Stop> {
        let stat = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Removed meanwhile (by the container): what was wanted.
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return match unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => {
                    self.removed += 1;
                    Ok(())
                }
                Err(Errno::NOENT) => Ok(()),
                // Replaced by a directory meanwhile: the next pass sees it as one.
                Err(Errno::ISDIR) => {
                    self.left += 1;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
        }
        if stat.st_dev != self.device {
            return Err(Stop::Mount(name.to_string_lossy().into_owned()));
        }
        let child = match openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                self.left += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let opened = fstat(&child)?;
        if opened.st_dev != stat.st_dev || opened.st_ino != stat.st_ino {
            // Swapped between the look and the open: the next pass looks again.
            self.left += 1;
            return Ok(());
        }
        self.dir(&child, depth + 1)?;
        drop(child);
        match unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => self.removed += 1,
            Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY | Errno::NOTDIR) => self.left += 1,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_scratch::Scratch;

    /// What a clear does below the mount root, on a scratch directory: files, directories,
    /// a fifo and symlinks out of it go; what the symlinks point at stays.
    #[test]
    fn empties_only_what_is_inside() {
        let scratch = Scratch::new("clear");
        let outside = scratch.make_dirs("outside");
        scratch.write("outside/keep", "kept");
        scratch.make_dirs("inside/a/b/c");
        let inside = scratch.0.join("inside");
        scratch.write("inside/a/b/c/f", "x");
        scratch.write("inside/top", "y");
        scratch.symlink(&outside, "inside/link");
        scratch.symlink(&outside.join("keep"), "inside/a/filelink");
        let root = super::super::open_dir_nofollow(&inside).unwrap();
        rustix::fs::mknodat(
            &root,
            "fifo",
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let device = fstat(&root).unwrap().st_dev;
        let mut clear = Clear {
            device,
            removed: 0,
            left: 0,
        };
        assert!(clear.dir(&root, 0).is_ok());
        assert_eq!((clear.removed, clear.left), (8, 0));
        assert_eq!(scratch.count_entries("inside"), 0);
        assert_eq!(scratch.read("outside/keep"), "kept");

        // Deeper than the limit: refused, not a descriptor per level without end.
        scratch.make_dirs(&format!("inside{}", "/d".repeat(MAX_DEPTH + 2)));
        assert!(matches!(clear.dir(&root, 0), Err(Stop::TooDeep)));
        // A directory of another device is a mount inside the channel: refused, not crossed.
        let mut other = Clear {
            device: device + 1,
            removed: 0,
            left: 0,
        };
        assert!(matches!(other.dir(&root, 0), Err(Stop::Mount(name)) if name == "d"));
    }

    #[test]
    fn what_is_not_a_mount_is_not_emptied() {
        let scratch = Scratch::new("clear-unmounted");
        scratch.write("f", "x");
        let refused = empty_mount(&scratch.0).unwrap_err().to_string();
        assert!(refused.contains("nothing is mounted there"), "{refused}");
        assert_eq!(scratch.read("f"), "x");
    }
}
