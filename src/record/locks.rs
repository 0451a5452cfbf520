//! The record store's locks: `.lock` (creates shared, gc exclusive), `.write.lock` (one
//! writer at a time), and each create's own `.creating-<id>`, which tells a later create whether
//! this one finished, is at work, or died half way.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{openat, unlinkat, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{check_owned, fs_error, Store};
use crate::error::{Context, Error, Result};

/// Held while it lives: creates hold it shared, `gc` exclusively.
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

/// Held by a create from before it writes a channel's record until the channel is up or taken
/// back: a later create that finds the file without its lock knows that the creator died half
/// way (killed by a hook timeout, an OOM kill), and that nobody is finishing the channel.
pub struct CreatorLock {
    dir: OwnedFd,
    name: String,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Drop for CreatorLock {
    fn drop(&mut self) {
        // Before the lock goes (the fields drop after this): nobody sees the file unlocked.
        let _ = unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
    }
}

/// What became of the create that wrote a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creator {
    /// It finished (or the record predates creator locks).
    Done,
    /// It is still at work.
    Working,
    /// It died before the channel was up: the channel is half made. With its unique name on
    /// the bus, to wait for the calls it sent before it died to reach systemd.
    Died { bus_name: Option<String> },
}

impl Store {
    /// Short and exclusive: held by whoever writes or removes a record, so that a check and
    /// the write it allows, or a read of a record's id and its removal, are one step.
    pub(super) fn write_lock(&self) -> Result<StoreLock> {
        self.flock(".write.lock", true, true)?
            .ok_or_else(|| Error::runtime("the record write lock was not made"))
    }

    /// Taken by a create for channel `id` before it writes the record; see [`CreatorLock`]. The
    /// file holds the creator's unique name on the bus.
    pub fn creator_lock(&self, id: &str, bus_name: &str) -> Result<CreatorLock> {
        use nix::fcntl::{Flock, FlockArg};
        let context = || format!("cannot lock the channel records in {}", self.dir.display());
        let dir = self
            .open_dir(true)?
            .ok_or_else(|| Error::runtime(context()))?;
        let name = Store::creator_file_name(id);
        let fd = openat(
            &dir,
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| fs_error(context(), e.into()))?;
        // From here on the file is this create's: a failure takes it away again (a full state
        // directory fails the write below), so that a refused create leaves nothing.
        let lock = Flock::lock(fs::File::from(fd), FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io(context(), errno));
        let written = lock.and_then(|mut lock| {
            lock.write_all(bus_name.as_bytes())
                .map_err(|e| fs_error(context(), e))?;
            Ok(lock)
        });
        match written {
            Ok(lock) => Ok(CreatorLock {
                dir,
                name,
                _lock: lock,
            }),
            Err(e) => {
                let _ = unlinkat(&dir, name.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Whether the create of channel `id` finished, is at work, or died half way.
    pub fn creator(&self, id: &str) -> Result<Creator> {
        use nix::fcntl::{Flock, FlockArg};
        let Some(dir) = self.open_dir(false)? else {
            return Ok(Creator::Done);
        };
        let name = Store::creator_file_name(id);
        let fd = match openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Creator::Done),
            Err(e) => return Err(fs_error(format!("cannot look at {name}"), e.into())),
        };
        check_owned(&fd, &self.dir.join(&name))?;
        match Flock::lock(fs::File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                let mut bus_name = String::new();
                let read = std::io::Read::read_to_string(&mut *file, &mut bus_name);
                Ok(Creator::Died {
                    bus_name: read.ok().filter(|_| !bus_name.is_empty()).map(|_| bus_name),
                })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(Creator::Working),
            Err((_, errno)) => Err(Error::io(format!("cannot lock {name}"), errno)),
        }
    }

    /// The bus names of creators that died half way, from their lock files (gc holds the store
    /// exclusively, so that no creator is at work).
    pub fn dead_creators(&self, _exclusive: &StoreLock) -> Result<Vec<String>> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(Vec::new());
        };
        let entries = rustix::fs::Dir::read_from(&dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|name| name.strip_prefix(".creating-"))
            else {
                continue;
            };
            if let Creator::Died {
                bus_name: Some(name),
            } = self.creator(id)?
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Removes what the killed creator of channel `id` left of its lock.
    pub fn forget_creator(&self, id: &str) -> Result<()> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(());
        };
        match unlinkat(
            &dir,
            Store::creator_file_name(id).as_str(),
            AtFlags::empty(),
        ) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.write_error(e.into())),
        }
    }

    fn creator_file_name(id: &str) -> String {
        format!(".creating-{id}")
    }

    /// Creates hold this shared from writing a record until their units are up; `gc` holds it
    /// exclusively, so that it never mistakes a channel being created for a leftover.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        self.flock(".lock", exclusive, true)?
            .ok_or_else(|| Error::runtime("the record lock was not made"))
    }

    /// [`Store::lock`], but only where a create has made the lock (and so the directory)
    /// already: `None` when there is none, and nothing is written. Where no create ever ran
    /// there is no record and no creator to wait for.
    pub fn lock_if_made(&self, exclusive: bool) -> Result<Option<StoreLock>> {
        self.flock(".lock", exclusive, false)
    }

    /// The exclusive [`Store::lock`] if nobody holds the lock now (`None` then, or where no
    /// create ever made it): for the prune a channel's stop starts, which must not wait for a
    /// create (systemd keeps the stopped mount loaded while the prune runs, and a create of
    /// that path again waits for it to be unloaded).
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>> {
        self.flock_with(".lock", true, false, false)
    }

    fn flock(&self, name: &str, exclusive: bool, make: bool) -> Result<Option<StoreLock>> {
        self.flock_with(name, exclusive, make, true)
    }

    fn flock_with(
        &self,
        name: &str,
        exclusive: bool,
        make: bool,
        wait: bool,
    ) -> Result<Option<StoreLock>> {
        use nix::fcntl::{Flock, FlockArg};
        let context = || format!("cannot lock the channel records in {}", self.dir.display());
        let Some(dir) = self.open_dir(make)? else {
            return if make {
                Err(Error::runtime(context()))
            } else {
                Ok(None)
            };
        };
        let create = if make {
            OFlags::CREATE
        } else {
            OFlags::empty()
        };
        let fd = match openat(
            &dir,
            name,
            create | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !make => return Ok(None),
            Err(e) => return Err(fs_error(context(), e.into())),
        };
        check_owned(&fd, &self.dir.join(name))?;
        let mode = match (exclusive, wait) {
            (true, true) => FlockArg::LockExclusive,
            (true, false) => FlockArg::LockExclusiveNonblock,
            (false, true) => FlockArg::LockShared,
            (false, false) => FlockArg::LockSharedNonblock,
        };
        let asked = std::time::Instant::now();
        let locked = Flock::lock(fs::File::from(fd), mode);
        LOCK_WAITED.with(|waited| waited.set(waited.get() + asked.elapsed()));
        match locked {
            Ok(lock) => Ok(Some(StoreLock(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
            Err((_, errno)) => Err(Error::io(context(), errno)),
        }
    }
}

thread_local! {
    /// How long this thread has waited for the records' locks since it last asked.
    static LOCK_WAITED: std::cell::Cell<std::time::Duration> =
        const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

/// How long this thread has waited for the records' locks since the last call (the NRI
/// plugin's journal line says it per request).
pub fn take_lock_waited() -> std::time::Duration {
    LOCK_WAITED.with(|waited| waited.replace(std::time::Duration::ZERO))
}
