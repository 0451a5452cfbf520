//! The per-channel record under /var/lib/hostchan: what `list` and `status` need that the mount
//! unit cannot carry, kept on persistent disk so that leftovers of a crash or reboot can be found.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::error::{Context, Error, Result};

pub const STATE_DIR: &str = "/var/lib/hostchan";

/// Bumped when a record's meaning changes; readers refuse versions they do not know.
const RECORD_VERSION: u32 = 1;

/// A channel's record: the channel, and what cleaning up after it needs. The file is flat TOML
/// (`version`, the channel's fields, `new_dirs_from`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    #[serde(flatten)]
    pub channel: Channel,
    /// The highest directory that did not exist before the channel (systemd creates missing
    /// parents of a mount point); cleanup removes empty directories up to it.
    pub new_dirs_from: PathBuf,
}

impl Record {
    pub fn new(channel: Channel, new_dirs_from: PathBuf) -> Record {
        Record {
            version: RECORD_VERSION,
            channel,
            new_dirs_from,
        }
    }

    pub fn host_path(&self) -> &Path {
        &self.channel.spec.host_path
    }

    pub fn unit(&self) -> &str {
        &self.channel.unit
    }

    /// The error for a create at a path that already has a channel.
    pub fn already_a_channel(&self) -> Error {
        Error::already_exists(format!(
            "host path {} is already a channel ({}); delete it first with: hostchan delete {}",
            self.host_path().display(),
            self.unit(),
            self.host_path().display()
        ))
    }
}

/// The directory of channel records, one TOML file per channel named after its mount unit.
/// Released when dropped.
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(Path::new(STATE_DIR).join("channels"))
    }
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// A mount unit name is at most 255 bytes; with `.mount` replaced by `.toml` it stays a
    /// valid file name.
    pub fn path_of(&self, unit: &str) -> PathBuf {
        let stem = unit.strip_suffix(".mount").unwrap_or(unit);
        self.dir.join(format!("{stem}.toml"))
    }

    /// Writes a new record; fails with `AlreadyExists` if the channel already has one, which
    /// makes the record the arbiter between two creates racing for one path.
    pub fn create(&self, record: &Record) -> Result<()> {
        let context = || format!("cannot write channel record in {}", self.dir.display());
        fs::create_dir_all(&self.dir).map_err(|e| fs_error(context(), e))?;
        let text = toml::to_string(record).map_err(|e| Error::io(context(), e))?;
        let target = self.path_of(record.unit());
        let temp = self.temp_path();
        let written =
            write_synced(&temp, text.as_bytes()).and_then(|()| fs::hard_link(&temp, &target));
        let _ = fs::remove_file(&temp);
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(record.already_a_channel()),
            Err(e) => Err(fs_error(context(), e)),
        }
    }

    /// Creates hold this shared from writing a record until their units are up; `gc` holds it
    /// exclusively, so that it never mistakes a channel being created for a leftover.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        use nix::fcntl::{Flock, FlockArg};
        let context = || format!("cannot lock the channel records in {}", self.dir.display());
        fs::create_dir_all(&self.dir).map_err(|e| fs_error(context(), e))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .map_err(|e| fs_error(context(), e))?;
        let mode = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(file, mode)
            .map(StoreLock)
            .map_err(|(_, errno)| Error::io(context(), errno))
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".tmp-{}-{n}", std::process::id()))
    }

    pub fn load(&self, unit: &str) -> Result<Option<Record>> {
        read_record(&self.path_of(unit))
    }

    /// Removes a record; `false` when there was none.
    pub fn remove(&self, unit: &str) -> Result<bool> {
        let path = self.path_of(unit);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
        }
    }

    /// Every record, sorted by host path. Unreadable records are reported, not skipped silently.
    pub fn all(&self) -> Result<Vec<Record>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("cannot read {}", self.dir.display()), e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", self.dir.display()))?;
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "toml") {
                continue;
            }
            match read_record(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping unreadable channel record: {e}"),
            }
        }
        records.sort_by(|a, b| a.host_path().cmp(b.host_path()));
        Ok(records)
    }
}

/// The records are root's: say so rather than leave a bare EACCES.
fn fs_error(context: String, err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::PermissionDenied {
        Error::runtime(format!(
            "{context}: permission denied; run hostchan as root"
        ))
    } else {
        Error::io(context, err)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    let record: Record = toml::from_str(&text).map_err(|e| {
        Error::runtime(format!(
            "channel record {} is damaged: {}",
            path.display(),
            e.message()
        ))
    })?;
    if record.version != RECORD_VERSION {
        return Err(Error::runtime(format!(
            "channel record {} has version {}, this hostchan reads version {RECORD_VERSION}",
            path.display(),
            record.version
        )));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Access, ChannelSpec};

    fn record(unit: &str) -> Record {
        Record::new(
            Channel {
                spec: ChannelSpec {
                    host_path: "/run/chan/c1".into(),
                    container_path: "/chan".into(),
                    access: Access::Ro,
                    size: 4096,
                },
                owner: Some("ctr.scope".into()),
                container: None,
                unit: unit.into(),
                cleanup_unit: format!("hostchan-cleanup@{unit}.service"),
                created: 1,
            },
            "/run/chan".into(),
        )
    }

    #[test]
    fn the_file_is_flat_toml() {
        let text = toml::to_string(&record("run-chan-c1.mount")).unwrap();
        assert_eq!(
            text,
            "version = 1\nhost_path = \"/run/chan/c1\"\ncontainer_path = \"/chan\"\nmode = \"ro\"\nsize = 4096\nowner = \"ctr.scope\"\nunit = \"run-chan-c1.mount\"\ncleanup_unit = \"hostchan-cleanup@run-chan-c1.mount.service\"\ncreated = 1\nnew_dirs_from = \"/run/chan\"\n"
        );
    }

    #[test]
    fn create_is_exclusive_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("hostchan-record-test-{}", std::process::id()));
        let store = Store::new(dir.clone());
        let r = record("run-chan-c1.mount");
        store.create(&r).unwrap();
        assert_eq!(store.path_of(r.unit()), dir.join("run-chan-c1.toml"));
        assert_eq!(store.load(r.unit()).unwrap(), Some(r.clone()));
        let err = store.create(&r).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::AlreadyExists, "{err}");
        assert_eq!(store.all().unwrap(), vec![r.clone()]);
        assert!(store.remove(r.unit()).unwrap());
        assert!(!store.remove(r.unit()).unwrap());
        assert_eq!(store.load(r.unit()).unwrap(), None);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "temp files left behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_record_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("hostchan-record-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.toml"), "version = 1\nbogus = true\n").unwrap();
        let err = Store::new(dir.clone())
            .load("x.mount")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml is damaged"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
