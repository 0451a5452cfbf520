//! Scratch directories for the unit tests: under the build's own `target/`, never under a
//! directory others can write to (where a planted symlink would redirect what a test running
//! as root creates, writes and removes).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory hostchan's user owns, mode 0755, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/unit-scratch")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the unit tests make and read in a scratch directory goes as hostchan's own code does:
/// each step from the parent's descriptor, never through a symlink (a test that plants one
/// must not be redirected by another).
impl Scratch {
    /// `relative`'s parent, opened without following symlinks, and its last component.
    fn parent_of(&self, relative: &str) -> (std::os::fd::OwnedFd, std::ffi::OsString) {
        let path = self.0.join(relative);
        let name = path.file_name().expect("a file name").to_owned();
        let parent = crate::hostfs::open_dir_nofollow(path.parent().expect("a parent"))
            .expect("open the parent without following symlinks");
        (parent, name)
    }

    /// Makes `relative` and every directory on its way (0755), none through a symlink.
    pub fn make_dirs(&self, relative: &str) -> PathBuf {
        let mut path = self.0.clone();
        for component in Path::new(relative).components() {
            path.push(component);
            crate::hostfs::make_dir_nofollow(&path, 0o755).expect("make a scratch directory");
        }
        path
    }

    /// Writes a new file (never an existing entry, never through a symlink).
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        use rustix::fs::{openat, Mode, OFlags};
        let (parent, name) = self.parent_of(relative);
        let fd = openat(
            &parent,
            name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .expect("make a scratch file");
        std::io::Write::write_all(&mut std::fs::File::from(fd), contents.as_bytes())
            .expect("write a scratch file");
        self.0.join(relative)
    }

    /// Reads a file, not following a symlink at it or on its way.
    pub fn read(&self, relative: &str) -> String {
        use rustix::fs::{openat, Mode, OFlags};
        let (parent, name) = self.parent_of(relative);
        let fd = openat(
            &parent,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open a scratch file");
        std::io::read_to_string(std::fs::File::from(fd)).expect("read a scratch file")
    }

    /// Plants a symlink at `relative` pointing at `target`.
    pub fn symlink(&self, target: &Path, relative: &str) {
        let (parent, name) = self.parent_of(relative);
        rustix::fs::symlinkat(target, &parent, name.as_os_str()).expect("plant a symlink");
    }

    /// How many entries `relative` has, read from its descriptor.
    pub fn count_entries(&self, relative: &str) -> usize {
        let dir = crate::hostfs::open_dir_nofollow(&self.0.join(relative)).expect("open");
        rustix::fs::Dir::read_from(&dir)
            .expect("read a scratch directory")
            .filter_map(|entry| entry.ok())
            .filter(|entry| ![&b"."[..], b".."].contains(&entry.file_name().to_bytes()))
            .count()
    }
}
