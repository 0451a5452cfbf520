//! Everything hostchan does on the host path itself: making it, one component at a time and
//! never through a symlink; finding out whether it is mounted and how full it is; and removing
//! the directories it made, only while each is still the directory it made.
//!
//! The threat: a local user who can write an ancestor of a channel's path swaps a directory for
//! a symlink between hostchan's check and systemd's `mount` (which follows symlinks), or between
//! the unmount and the cleanup's `rmdir`. So every existing ancestor must be one only root can
//! change (a root-owned sticky directory such as /tmp counts only as the parent of a directory
//! hostchan makes itself, which others then cannot rename), each step is taken from the parent's
//! file descriptor with `RESOLVE_NO_SYMLINKS`, and each directory hostchan makes is recorded by
//! device and inode and removed only while it is still that directory.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    fchmod, fstat, mkdirat, openat2, statat, unlinkat, AtFlags, Mode, OFlags, ResolveFlags, CWD,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

mod clear;
mod mounts;
pub use clear::empty_mount;
pub use mounts::{is_mount_point, mounted_device, used_bytes, FsUsage, MountChanges, Usage};

/// A directory hostchan made for a channel, as it was made; or, with device and inode 0, one
/// it is about to make (the record is written first, so that a crash leaves nothing unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeDir {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl MadeDir {
    pub fn planned(path: PathBuf) -> MadeDir {
        MadeDir {
            path,
            dev: 0,
            ino: 0,
        }
    }

    fn is_planned(&self) -> bool {
        self.dev == 0 && self.ino == 0
    }
}

/// Opens a directory below `parent` without following any symlink (read-only rather than
/// O_PATH: hostchan sets the mode of those it makes through it).
fn open_beneath(parent: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<OwnedFd> {
    openat2(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
    )
}

fn open_root() -> Result<OwnedFd> {
    openat2(
        CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .context("cannot open /")
}

/// Who can change an existing directory, for the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Only root (hostchan's user) can add, remove or rename entries.
    OnlyRoot,
    /// Root's, but sticky and writable by others (/tmp): others can add entries, but cannot
    /// rename or remove root's. Fine as the parent of a directory hostchan makes now.
    StickyRoot,
}

fn trust_of(fd: &OwnedFd, shown: &Path, host_path: &Path) -> Result<Trust> {
    let stat = fstat(fd).with_context(|| format!("cannot look at {}", shown.display()))?;
    // Root's, or this process's own: the same as root's for hostchan, which runs as root; a
    // unit test run as a plain user makes its channels in a scratch tree of its own.
    let euid = rustix::process::geteuid().as_raw();
    let trusted_owner = stat.st_uid == 0 || stat.st_uid == euid;
    let mode = stat.st_mode & 0o7777;
    let writable_by_others = mode & 0o022 != 0;
    match (trusted_owner, writable_by_others, mode & 0o1000 != 0) {
        (true, false, _) => Ok(Trust::OnlyRoot),
        (true, true, true) => Ok(Trust::StickyRoot),
        _ => Err(Error::invalid(
            "host path",
            host_path.display().to_string(),
            format!(
                "has an ancestor others can change ({}: uid {}, mode {mode:04o}); choose a path whose existing directories only root can write",
                shown.display(),
                stat.st_uid
            ),
        )),
    }
}

/// Walks `path` from `/`, component by component, checking what exists; with `make`, creates
/// what is missing (mode 0755, whatever the umask) and adds it to `made`, the path itself last.
/// Without `make` it only checks, and adds what it would make as planned.
/// With `make`: `planned` is what this channel's plan said was missing (its record, written
/// before); a directory of it found made meanwhile, or one whose mkdir finds it made, is
/// claimed (see [`make_host_path`]), and its path put in `claimed`.
fn walk(
    path: &Path,
    make: bool,
    planned: &[MadeDir],
    made: &mut Vec<MadeDir>,
    claimed: &mut Vec<PathBuf>,
) -> Result<()> {
    let invalid = |reason: String| Error::invalid("host path", path.display().to_string(), reason);
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let mut parent = open_root()?;
    let mut parent_trust = trust_of(&parent, Path::new("/"), path)?;
    let mut shown = PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        shown.push(name);
        let last = i + 1 == names.len();
        let existing = if made.is_empty() {
            match open_beneath(&parent, name) {
                Ok(fd) => Some(fd),
                Err(Errno::NOENT) => None,
                Err(Errno::LOOP) | Err(Errno::NOTDIR) if last => {
                    let kind = match statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat)
                            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                                == rustix::fs::FileType::Symlink =>
                        {
                            "a symlink"
                        }
                        _ => "a file",
                    };
                    return Err(invalid(format!(
                        "already exists ({kind}); a channel needs a path that does not exist yet"
                    )));
                }
                Err(Errno::LOOP) => {
                    return Err(invalid(format!(
                        "has a symlink as ancestor ({}); give the resolved path",
                        shown.display()
                    )))
                }
                Err(Errno::NOTDIR) => {
                    return Err(invalid(format!(
                        "has an ancestor that is not a directory ({})",
                        shown.display()
                    )));
                }
                Err(e) => {
                    return Err(invalid(format!("cannot check {}: {e}", shown.display())));
                }
            }
        } else {
            None
        };
        if let Some(fd) = existing {
            if last {
                return Err(invalid(
                    "already exists (a directory); a channel needs a path that does not exist yet"
                        .into(),
                ));
            }
            if parent_trust == Trust::StickyRoot {
                return Err(invalid(format!(
                    "has {} in a directory anyone can write to; only a directory hostchan makes itself may sit there",
                    shown.display()
                )));
            }
            parent_trust = trust_of(&fd, &shown, path)?;
            if make && planned.iter().any(|p| p.is_planned() && p.path == shown) {
                claim(&fd, &shown, made, claimed)?;
            }
            parent = fd;
            continue;
        }
        if !make {
            let missing = names[i..].iter().scan(
                shown.parent().map(Path::to_path_buf).unwrap_or_default(),
                |at, name| {
                    at.push(name);
                    Some(MadeDir::planned(at.clone()))
                },
            );
            made.extend(missing);
            return Ok(());
        }
        match mkdirat(&parent, *name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            // Made since we looked, where only root can add entries: by root, another create
            // making the same new parent at the same moment. Checked as a directory that was
            // there would be, and claimed.
            Err(Errno::EXIST) if !last && parent_trust == Trust::OnlyRoot => {
                let fd = open_beneath(&parent, name).map_err(|e| {
                    invalid(format!(
                        "{} appeared while hostchan was making the path and cannot be opened as a directory ({e})",
                        shown.display()
                    ))
                })?;
                parent_trust = trust_of(&fd, &shown, path)?;
                claim(&fd, &shown, made, claimed)?;
                parent = fd;
                continue;
            }
            // Made by someone else since we looked: not ours, and maybe not safe.
            Err(Errno::EXIST) => {
                return Err(invalid(format!(
                    "{} appeared while hostchan was making the path; try again",
                    shown.display()
                )))
            }
            Err(e) => {
                return Err(Error::io(format!("cannot make {}", shown.display()), e));
            }
        }
        let fd = open_beneath(&parent, name)
            .with_context(|| format!("cannot open {}, just made", shown.display()))?;
        fchmod(&fd, Mode::from_raw_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", shown.display()))?;
        let stat = fstat(&fd).with_context(|| format!("cannot look at {}", shown.display()))?;
        made.push(MadeDir {
            path: shown.clone(),
            dev: stat.st_dev,
            ino: stat.st_ino,
        });
        parent_trust = Trust::OnlyRoot;
        parent = fd;
    }
    Ok(())
}

/// Names a directory another create made on this channel's path since its plan (it appeared
/// where only root can add entries) in what this walk made, with its identity: shared with
/// that create's channel, whose record may have been written before this one's and so not
/// know this channel, it then goes with whichever channel goes last, and only while empty.
fn claim(
    fd: &OwnedFd,
    shown: &Path,
    made: &mut Vec<MadeDir>,
    claimed: &mut Vec<PathBuf>,
) -> Result<()> {
    let stat = fstat(fd).with_context(|| format!("cannot look at {}", shown.display()))?;
    made.push(MadeDir {
        path: shown.to_path_buf(),
        dev: stat.st_dev,
        ino: stat.st_ino,
    });
    claimed.push(shown.to_path_buf());
    Ok(())
}

/// Of the directories other channels' records say they made above a new channel, those that
/// are still what one of them made (a record can be older than the directory at its path now:
/// removed when it was empty and made again by a later create), each with the identity it has
/// now; a directory no record made as it is now is left out, so that no channel ever claims it.
/// One that another create planned and has not made yet stays planned: that create may make it
/// after this one found it missing, and this channel must be able to remove it if it goes last.
pub fn still_made(recorded: Vec<MadeDir>) -> Vec<MadeDir> {
    let mut still: Vec<MadeDir> = Vec::new();
    for dir in &recorded {
        if still.iter().any(|s| s.path == dir.path) {
            continue;
        }
        let planned = || {
            recorded
                .iter()
                .any(|d| d.path == dir.path && d.is_planned())
        };
        let fd = match open_dir_nofollow(&dir.path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if planned() => {
                still.push(MadeDir::planned(dir.path.clone()));
                continue;
            }
            Err(_) => continue,
        };
        let Ok(now) = fstat(&fd) else {
            continue;
        };
        let root = rustix::process::geteuid().as_raw();
        let made_as_it_is = recorded.iter().any(|d| {
            d.path == dir.path
                && ((d.dev, d.ino) == (now.st_dev, now.st_ino)
                    || (d.is_planned() && now.st_uid == root))
        });
        if made_as_it_is {
            still.push(MadeDir {
                path: dir.path.clone(),
                dev: now.st_dev,
                ino: now.st_ino,
            });
        }
    }
    still
}

/// Checks, without changing anything, that `path` could be made: it does not exist, nothing on
/// its way is a symlink or a file, and its existing ancestors are root's alone.
pub fn check_free(path: &Path) -> Result<()> {
    plan_host_path(path).map(drop)
}

/// What [`make_host_path`] would make, as planned directories, after the checks of
/// [`check_free`].
pub fn plan_host_path(path: &Path) -> Result<Vec<MadeDir>> {
    let mut planned = Vec::new();
    walk(path, false, &[], &mut planned, &mut Vec::new())?;
    Ok(planned)
}

/// Makes `path` and its missing parents safely; returns what it made, the path itself last.
/// A directory `planned` (the channel's plan, in its record) that another create made since,
/// as `hostchan create`s run in parallel under one new parent do, is claimed and returned
/// with what it made: shared, it goes with the last channel that names it, only while empty.
/// On failure, whatever it made is removed again (what it claimed is the other create's).
pub fn make_host_path(path: &Path, planned: &[MadeDir]) -> Result<Vec<MadeDir>> {
    let mut made = Vec::new();
    let mut claimed = Vec::new();
    match walk(path, true, planned, &mut made, &mut claimed) {
        Ok(()) => Ok(made),
        Err(e) => {
            // The walk stops at its first failure; what it made before is ours to remove.
            made.retain(|dir| !claimed.contains(&dir.path));
            if let Err(undo) = remove_made(&made) {
                tracing::warn!("{undo}");
            }
            Err(e)
        }
    }
}

/// What removing the directories made for a channel did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Removed {
    /// The channel's own directory (the deepest) was removed, or was already gone.
    pub removed_directory: bool,
}

/// Removes what hostchan made, deepest first, each only while it is empty and still the
/// directory hostchan made (same device and inode, reached without symlinks). A parent that is
/// not empty stays (another channel uses it), and so does one that is no longer the directory
/// this record knows (it went when it was empty and a later create made it again: that
/// create's record has it); anything else that stops the removal is an error naming the
/// directory, and the rest stays.
pub fn remove_made(made: &[MadeDir]) -> Result<Removed> {
    // A record can name a path twice: a parent it shared as another channel had made it, which
    // went while empty before this create made it again. The later entry is what this create
    // made and what stands there now; the earlier one would stop the removal as not ours.
    let mut dirs: Vec<&MadeDir> = Vec::new();
    for dir in made.iter().rev() {
        if !dirs.iter().any(|kept| kept.path == dir.path) {
            dirs.push(dir);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
    let mut removed = Removed::default();
    for (i, dir) in dirs.iter().enumerate() {
        let deepest = i == 0;
        match remove_one(dir)? {
            Outcome::Removed | Outcome::Gone => {
                if deepest {
                    removed.removed_directory = true;
                }
            }
            // Another channel's directory, or a file, is in it, or it is another create's now:
            // it stays, and so do its parents.
            Outcome::NotEmpty | Outcome::NotOurs if !deepest => break,
            // The channel's own directory with a stranger in its place is never passed over.
            Outcome::NotOurs => return Err(stranger_at(dir)),
            Outcome::NotEmpty => {
                return Err(Error::runtime(format!(
                    "cannot remove channel directory {}: it is not empty (kept it and its record)",
                    dir.path.display()
                )))
            }
        }
    }
    Ok(removed)
}

enum Outcome {
    Removed,
    Gone,
    NotEmpty,
    /// A directory other than the one the record knows stands at the path.
    NotOurs,
}

/// The error for a path where something other than the directory hostchan made stands.
fn stranger_at(dir: &MadeDir) -> Error {
    let why = if is_mount_point(&dir.path).unwrap_or(false) {
        "something is mounted on it"
    } else {
        "it is no longer the directory hostchan made (another file or directory took its place)"
    };
    Error::runtime(format!(
        "cannot remove channel directory {}: {why}; left it as it is",
        dir.path.display()
    ))
}

fn remove_one(dir: &MadeDir) -> Result<Outcome> {
    let (Some(parent_path), Some(name)) = (dir.path.parent(), dir.path.file_name()) else {
        return Ok(Outcome::Gone);
    };
    let parent = match open_dir_nofollow(parent_path) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Outcome::Gone),
        Err(e) => {
            return Err(Error::runtime(format!(
                "cannot reach {} without following symlinks ({e}); left it as it is",
                parent_path.display()
            )))
        }
    };
    let stat = match statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(Outcome::Gone),
        Err(e) => {
            return Err(Error::io(
                format!("cannot look at {}", dir.path.display()),
                e,
            ))
        }
    };
    if dir.is_planned() {
        // Recorded before it was made, and the maker did not get to record what it made: the
        // path is reached without symlinks through directories only root can change, so a
        // directory there that root owns is hostchan's.
        let root = rustix::process::geteuid().as_raw();
        let is_dir =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory;
        if !is_dir || stat.st_uid != root {
            return Err(Error::runtime(format!(
                "cannot remove {}: it is not a directory of root's, so not one hostchan made; left it as it is",
                dir.path.display()
            )));
        }
    } else if (stat.st_dev, stat.st_ino) != (dir.dev, dir.ino) {
        let is_dir =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory;
        if is_dir {
            return Ok(Outcome::NotOurs);
        }
        return Err(stranger_at(dir));
    }
    match unlinkat(&parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(Outcome::Removed),
        Err(Errno::NOENT) => Ok(Outcome::Gone),
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => Ok(Outcome::NotEmpty),
        Err(e) => Err(Error::io(
            format!(
                "cannot remove channel directory {} (kept it and its record)",
                dir.path.display()
            ),
            e,
        )),
    }
}

/// Opens a directory by absolute path without following any symlink on the way (nor a /proc
/// magic link): what every path-based step here starts from.
pub fn open_dir_nofollow(path: &Path) -> rustix::io::Result<OwnedFd> {
    openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// `dir`, opened without following symlinks, if only root (hostchan's user) can add, remove or
/// rename entries in it: for what hostchan makes there by name (the metrics socket), which no
/// one else may then swap.
pub fn open_dir_only_root_changes(dir: &Path) -> Result<OwnedFd> {
    let fd = open_dir_nofollow(dir).map_err(|e| {
        Error::io(
            format!("cannot open {} without following symlinks", dir.display()),
            e,
        )
    })?;
    match trust_of(&fd, dir, dir) {
        Ok(Trust::OnlyRoot) => Ok(fd),
        _ => {
            let stat = fstat(&fd).with_context(|| format!("cannot look at {}", dir.display()))?;
            Err(Error::invalid(
                "directory",
                dir.display().to_string(),
                format!(
                    "others can change it (uid {}, mode {:04o}); choose a directory only root can write",
                    stat.st_uid,
                    stat.st_mode & 0o7777
                ),
            ))
        }
    }
}

/// `mkdir` of `path` from its parent's descriptor, reached without symlinks, with exactly
/// `mode` (the umask does not count); an existing directory is left as it is.
pub fn make_dir_nofollow(path: &Path, mode: u32) -> rustix::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let parent = open_dir_nofollow(parent)?;
    match mkdirat(&parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => fchmod(&open_beneath(&parent, name)?, Mode::from_raw_mode(mode)),
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::test_scratch::Scratch;

    fn error(result: Result<impl std::fmt::Debug>) -> String {
        let err = result.unwrap_err();
        err.to_string()
    }

    #[test]
    fn host_path_on_disk() {
        let scratch = Scratch::new("hostfs");
        let dir = &scratch.0;
        check_free(&dir.join("free")).unwrap();
        let planned = plan_host_path(&dir.join("free/deeper/still")).unwrap();
        let paths: Vec<&Path> = planned.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                dir.join("free"),
                dir.join("free/deeper"),
                dir.join("free/deeper/still")
            ]
        );
        assert!(planned.iter().all(MadeDir::is_planned));
        assert!(!dir.join("free").exists(), "check_free made something");
        let err = error(check_free(dir));
        assert!(err.contains("already exists (a directory)"), "{err}");
        std::fs::write(dir.join("file"), "").unwrap();
        assert!(error(check_free(&dir.join("file"))).contains("already exists (a file)"));
        assert!(error(check_free(&dir.join("file/x")))
            .contains("has an ancestor that is not a directory"));
        std::os::unix::fs::symlink("/nonexistent-target", dir.join("dangling")).unwrap();
        let err = error(check_free(&dir.join("dangling")));
        assert!(err.contains("already exists (a symlink)"), "{err}");
        std::os::unix::fs::symlink(dir, dir.join("link")).unwrap();
        let err = error(check_free(&dir.join("link/x")));
        assert!(err.contains("has a symlink as ancestor"), "{err}");
    }

    /// `hostchan create` run in parallel for two paths below one new parent, both planned
    /// before either makes anything: whichever comes second to a parent (its look or its
    /// mkdir) finds the other's directory and claims it, and whichever channel goes last
    /// takes the parents with it. Both ways round, 40 rounds.
    #[test]
    fn a_new_parent_made_by_two_creates_at_once_goes_with_the_last() {
        let scratch = Scratch::new("hostfs-race");
        for round in 0..40 {
            let top = scratch.0.join(format!("r{round}"));
            let barrier = std::sync::Barrier::new(2);
            // Both planned (their records written) before either makes anything.
            let plans: Vec<(PathBuf, Vec<MadeDir>)> = ["a", "b"]
                .iter()
                .map(|leaf| {
                    let path = top.join("shared").join(leaf);
                    let plan = plan_host_path(&path).expect("a plan");
                    (path, plan)
                })
                .collect();
            let made: Vec<Vec<MadeDir>> = std::thread::scope(|s| {
                let walks: Vec<_> = plans
                    .iter()
                    .map(|(path, plan)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            make_host_path(path, plan)
                        })
                    })
                    .collect();
                walks
                    .into_iter()
                    .map(|walk| match walk.join() {
                        Ok(Ok(made)) => made,
                        Ok(Err(e)) => panic!("round {round}: {e}"),
                        Err(_) => panic!("round {round}: a walk panicked"),
                    })
                    .collect()
            });
            for one in &made {
                let paths: Vec<&Path> = one.iter().map(|d| d.path.as_path()).collect();
                assert!(
                    paths.contains(&top.as_path()) && paths.contains(&top.join("shared").as_path()),
                    "round {round}: {paths:?}"
                );
            }
            let (first, last) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
            remove_made(&made[first]).expect("the first removed");
            assert!(
                top.join("shared").exists(),
                "round {round}: the parent went too early"
            );
            remove_made(&made[last]).expect("the last removed");
            assert!(!top.exists(), "round {round}: the parents stayed");
        }
    }

    #[test]
    fn made_dirs_are_removed_only_while_they_are_what_was_made() {
        let scratch = Scratch::new("hostfs-made");
        let dir = &scratch.0;
        let made = make_host_path(&dir.join("a/b/c"), &[]).unwrap();
        let paths: Vec<&Path> = made.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(paths, [dir.join("a"), dir.join("a/b"), dir.join("a/b/c")]);
        for d in &made {
            let mode = std::fs::metadata(&d.path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{}", d.path.display());
        }
        // A sibling in a shared parent keeps the parent.
        std::fs::create_dir(dir.join("a/b/other")).unwrap();
        let removed = remove_made(&made).unwrap();
        assert!(removed.removed_directory);
        assert!(!dir.join("a/b/c").exists());
        assert!(dir.join("a/b/other").exists());
        std::fs::remove_dir(dir.join("a/b/other")).unwrap();

        // Swapped for another directory of the same name: left alone and reported. (The old
        // one is kept, so that the new one cannot get its inode number.)
        let made = make_host_path(&dir.join("x/y"), &[]).unwrap();
        std::fs::rename(dir.join("x/y"), dir.join("y-old")).unwrap();
        std::fs::create_dir(dir.join("x/y")).unwrap();
        let err = error(remove_made(&made));
        assert!(
            err.contains("no longer the directory hostchan made"),
            "{err}"
        );
        assert!(dir.join("x/y").exists());
        // A parent swapped for a symlink is not followed.
        std::fs::remove_dir(dir.join("x/y")).unwrap();
        std::fs::rename(dir.join("x"), dir.join("x-moved")).unwrap();
        std::fs::create_dir(dir.join("x-moved/y")).unwrap();
        std::os::unix::fs::symlink(dir.join("x-moved"), dir.join("x")).unwrap();
        let err = error(remove_made(&made));
        assert!(err.contains("without following symlinks"), "{err}");
        assert!(dir.join("x-moved/y").exists());
        // Planned, then made by a create that died before recording what it made.
        let planned = plan_host_path(&dir.join("p/q")).unwrap();
        std::fs::create_dir_all(dir.join("p/q")).unwrap();
        assert!(remove_made(&planned).unwrap().removed_directory);
        assert!(!dir.join("p").exists());
        // Already gone: nothing to do.
        std::fs::remove_file(dir.join("x")).unwrap();
        assert!(remove_made(&made).unwrap().removed_directory);
    }

    /// A record older than the parent at its path now (the parent went while empty and a later
    /// create made it again): its channel's directory goes, the parent is the later create's,
    /// and a new channel beside it shares the parent as it is now, never as the old record had
    /// it, so that whichever channel goes last removes it.
    #[test]
    fn a_parent_made_again_belongs_to_its_new_maker() {
        let scratch = Scratch::new("hostfs-again");
        let dir = &scratch.0;
        let old = make_host_path(&dir.join("r/old"), &[]).unwrap();
        std::fs::remove_dir(dir.join("r/old")).unwrap();
        // Moved away rather than removed, so that the new parent cannot get its inode number.
        std::fs::rename(dir.join("r"), dir.join("r-gone")).unwrap();
        let new = make_host_path(&dir.join("r/new"), &[]).unwrap();
        assert_ne!(old[0], new[0]);
        // The old record goes, leaving the parent to the new channel.
        assert!(remove_made(&old).unwrap().removed_directory);
        assert!(dir.join("r/new").exists());
        // A third channel under r shares it as it is now, whichever record it found first.
        let shared = still_made(vec![old[0].clone(), new[0].clone()]);
        assert_eq!(shared, [new[0].clone()]);
        assert_eq!(still_made(vec![old[0].clone()]), Vec::<MadeDir>::new());
        let planned = MadeDir::planned(dir.join("r"));
        assert_eq!(still_made(vec![planned.clone()]), [new[0].clone()]);
        // Planned by a create that has not made it yet: it stays planned.
        let later = MadeDir::planned(dir.join("not-yet"));
        assert_eq!(still_made(vec![later.clone()]), [later]);
        assert!(remove_made(&new).unwrap().removed_directory);
        assert!(!dir.join("r").exists());
    }

    /// A create that shared a parent another channel had made, which went while empty before
    /// this create made it again: its record names the parent twice, and its teardown removes
    /// the parent as it made it.
    #[test]
    fn a_parent_shared_then_made_again_goes_with_the_channel() {
        let scratch = Scratch::new("hostfs-shared-again");
        let dir = &scratch.0;
        let first = make_host_path(&dir.join("s/first"), &[]).unwrap();
        let shared = still_made(vec![first[0].clone()]);
        assert_eq!(shared, [first[0].clone()]);
        // The first channel goes, and its parent with it, before the second makes its own.
        std::fs::rename(dir.join("s"), dir.join("s-gone")).unwrap();
        let made = make_host_path(&dir.join("s/second"), &[]).unwrap();
        assert_ne!(made[0], first[0]);
        let recorded = [shared, made].concat();
        assert!(remove_made(&recorded).unwrap().removed_directory);
        assert!(!dir.join("s").exists());
    }

    #[test]
    fn lookups_never_follow_a_symlink_on_the_way() {
        let scratch = Scratch::new("hostfs-nofollow");
        let dir = &scratch.0;
        std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
        // /proc is a mount; reached through the symlink it is not ours to judge.
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert_eq!(mounted_device(&dir.join("root/proc")).unwrap(), None);
        assert_eq!(mounted_device(&dir.join("root")).unwrap(), None);
        assert_eq!(used_bytes(&dir.join("root/proc")), None);
        assert!(used_bytes(dir).is_some());
        // Nothing is made through a symlink either.
        std::fs::create_dir(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        assert!(make_dir_nofollow(&dir.join("link/new"), 0o700).is_err());
        assert!(!dir.join("real/new").exists());
        make_dir_nofollow(&dir.join("real/new"), 0o700).unwrap();
        // Neither through the parent kept open for the next channel.
        let mut usage = Usage::default();
        assert!(usage.used_bytes(&dir.join("real")).is_some());
        assert_eq!(usage.used_bytes(&dir.join("link")), None);
        assert!(usage.used_bytes(&dir.join("real")).is_some());
        let mode = std::fs::metadata(dir.join("real/new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn ancestors_others_can_write_are_refused() {
        let scratch = Scratch::new("hostfs-trust");
        let dir = &scratch.0;
        std::fs::create_dir(dir.join("open")).unwrap();
        std::fs::set_permissions(dir.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = error(check_free(&dir.join("open/c")));
        assert!(err.contains("has an ancestor others can change"), "{err}");
        assert!(err.contains("mode 0777"), "{err}");
        // Sticky and ours (like /tmp): only for a directory made now.
        std::fs::create_dir(dir.join("sticky")).unwrap();
        std::fs::set_permissions(dir.join("sticky"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        let made = make_host_path(&dir.join("sticky/mine/c"), &[]).unwrap();
        assert_eq!(made.len(), 2);
        std::fs::create_dir(dir.join("sticky/theirs")).unwrap();
        let err = error(check_free(&dir.join("sticky/theirs/c")));
        assert!(err.contains("in a directory anyone can write to"), "{err}");
        remove_made(&made).unwrap();
    }
}
