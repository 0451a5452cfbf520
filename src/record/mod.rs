//! The per-channel record under /var/lib/hostchan: what `list` and `status` need that the mount
//! unit cannot carry, kept on persistent disk so that leftovers of a crash or reboot can be found.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{fchmod, fstat, linkat, openat, renameat, unlinkat, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use serde::{Deserialize, Serialize};

mod locks;

pub use locks::{take_lock_waited, Creator, CreatorLock, StoreLock};

use crate::error::{Context, Error, Result};
use crate::hostfs::{make_dir_nofollow, open_dir_nofollow, MadeDir};
use crate::model::{Attached, Channel, Lifetime, MemoryChange};
use crate::spec::{Access, ChannelSpec, RootOwner};

pub const STATE_DIR: &str = "/var/lib/hostchan";

/// Bumped when a record's meaning changes; readers refuse versions they do not know.
const RECORD_VERSION: u32 = 3;
/// Records of version 2 are TOML files (`<unit>.toml`, with the same fields), written by
/// hostchan before records became JSON: read as they are, rewritten as JSON at their next
/// change, so that an upgrade never loses a channel. JSON because `list` reads every record and
/// TOML parsing was most of its time at 1000 channels.
const TOML_RECORD_VERSION: u32 = 2;

/// A channel's record: the channel, and what cleaning up after it needs. The file is JSON:
/// `version`, the channel's fields, then `made`, the directories made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RecordFields")]
pub struct Record {
    pub version: u32,
    #[serde(flatten)]
    pub channel: Channel,
    /// The directories made for the channel (its own last), and the ones other channels'
    /// creation made above it; cleanup removes each only while empty and still the same.
    pub made: Vec<MadeDir>,
    /// Where `create --pid` or the hook attached the channel, for delete to detach it there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached: Option<Attached>,
    /// What `--grow-memory-limit` added to the owner's limit, for delete to take back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<MemoryChange>,
    /// When the container was last started or stopped (seconds since the epoch), for the idle
    /// limit of `delete`-lifetime channels.
    pub last_seen: u64,
    /// Seconds after `last_seen` that gc removes a `delete`-lifetime channel whose container
    /// is not running; 0: never. Taken from the configuration at create.
    pub idle_limit: u64,
    /// The names of the pod's containers a `pod`-lifetime channel has been given to, so that a
    /// container created again under one of them is known as a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_containers: Vec<String>,
}

/// A record's fields as they are on disk, one flat map: what a record is read as. serde
/// gathers the fields of `#[serde(flatten)]` members into a buffer of owned keys and values and
/// then reads that again, which was most of the parsing in `list` at 1000 channels.
#[derive(Deserialize)]
struct RecordFields {
    version: u32,
    id: String,
    host_path: PathBuf,
    container_path: PathBuf,
    mode: Access,
    size: u64,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    pod: Option<String>,
    unit: String,
    #[serde(default)]
    cleanup_unit: Option<String>,
    created: u64,
    #[serde(default = "lifetime_stop")]
    lifetime: Lifetime,
    #[serde(default)]
    root_owner: Option<RootOwner>,
    made: Vec<MadeDir>,
    #[serde(default)]
    attached: Option<Attached>,
    #[serde(default)]
    memory_limit: Option<MemoryChange>,
    #[serde(default)]
    last_seen: u64,
    #[serde(default)]
    idle_limit: u64,
    #[serde(default)]
    pod_containers: Vec<String>,
}

fn lifetime_stop() -> Lifetime {
    Lifetime::Stop
}

impl From<RecordFields> for Record {
    fn from(fields: RecordFields) -> Record {
        let lifetime = match (fields.lifetime, &fields.pod) {
            // Written before the container lifetime was recorded as itself.
            (Lifetime::Stop, Some(_)) => Lifetime::Container,
            (lifetime, _) => lifetime,
        };
        Record {
            version: fields.version,
            channel: Channel {
                id: fields.id,
                spec: ChannelSpec {
                    host_path: fields.host_path,
                    container_path: fields.container_path,
                    access: fields.mode,
                    size: fields.size,
                },
                owner: fields.owner,
                container: fields.container,
                pod: fields.pod,
                unit: fields.unit,
                cleanup_unit: fields.cleanup_unit,
                created: fields.created,
                lifetime,
                root_owner: fields.root_owner,
            },
            made: fields.made,
            attached: fields.attached,
            memory_limit: fields.memory_limit,
            last_seen: fields.last_seen,
            idle_limit: fields.idle_limit,
            pod_containers: fields.pod_containers,
        }
    }
}

impl Record {
    pub fn new(channel: Channel, made: Vec<MadeDir>) -> Record {
        Record {
            version: RECORD_VERSION,
            last_seen: channel.created,
            channel,
            made,
            attached: None,
            memory_limit: None,
            idle_limit: 0,
            pod_containers: Vec::new(),
        }
    }

    pub fn host_path(&self) -> &Path {
        &self.channel.spec.host_path
    }

    pub fn unit(&self) -> &str {
        &self.channel.unit
    }

    /// The error for a create at `host_path` whose unit name this record has: the same path,
    /// or another whose unit name is the same once systemd shortened one with a hash.
    pub fn refuses(&self, host_path: &Path) -> Error {
        if host_path == self.host_path() {
            return self.already_a_channel();
        }
        Error::already_exists(format!(
            "cannot create channel {}: its unit name {} is the channel at {} (systemd shortens unit names over 255 characters with a hash, which two paths can share); choose another path",
            host_path.display(),
            self.unit(),
            self.host_path().display()
        ))
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
/// The directory of channel records, one JSON file per channel named after its mount unit.
///
/// Records decide what root's cleanup removes, so they are root's alone: the directory is made
/// 0700 and each file 0600 whatever the umask, every file is opened relative to the directory
/// without following symlinks, and a directory or record that is not owned by hostchan's user
/// or that group or others can write is refused, never acted on.
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

    /// A mount unit name is at most 255 bytes; with `.mount` replaced by `.json` it stays a
    /// valid file name.
    fn file_name(unit: &str) -> String {
        let stem = unit.strip_suffix(".mount").unwrap_or(unit);
        format!("{stem}.json")
    }

    fn toml_file_name(unit: &str) -> String {
        let stem = unit.strip_suffix(".mount").unwrap_or(unit);
        format!("{stem}.toml")
    }

    #[cfg(test)]
    pub fn path_of(&self, unit: &str) -> PathBuf {
        self.dir.join(Store::file_name(unit))
    }

    /// The records directory, made (with its parent) when `create` and missing; `None` when
    /// missing and not to be made.
    fn open_dir(&self, create: bool) -> Result<Option<OwnedFd>> {
        let context = || format!("cannot open the channel records in {}", self.dir.display());
        match open_dir_nofollow(&self.dir) {
            Ok(fd) => {
                check_owned(&fd, &self.dir)?;
                Ok(Some(fd))
            }
            Err(e) if e == Errno::NOENT && create => {
                if let Some(parent) = self.dir.parent() {
                    make_dir_nofollow(parent, 0o755).map_err(|e| fs_error(context(), e.into()))?;
                }
                make_dir_nofollow(&self.dir, 0o700).map_err(|e| fs_error(context(), e.into()))?;
                let fd = open_dir_nofollow(&self.dir).map_err(|e| fs_error(context(), e.into()))?;
                check_owned(&fd, &self.dir)?;
                Ok(Some(fd))
            }
            Err(e) if e == Errno::NOENT => Ok(None),
            Err(e) => Err(fs_error(context(), e.into())),
        }
    }

    /// Writes a new record made by `make` from every record there is, as one critical section
    /// against other writers: the checks `make` does (not inside another channel, no channel
    /// inside this one) hold when the record lands. Fails with `AlreadyExists` if the channel
    /// already has one, which makes the record the arbiter between creates racing for a path.
    /// The file is written unnamed (O_TMPFILE) and linked in whole: a kill leaves no
    /// temporary file. It is synced first where a power loss would leave something for it to
    /// name: a channel whose directories lie on a disk (a cleanup unit removes them). One under
    /// /run is not: after a power loss no tmpfs, directory or unit of it is left, and syncing
    /// under the lock had every create of a pod storm wait for the disk in turn.
    pub fn create_checked(&self, make: impl FnOnce(&[Record]) -> Result<Record>) -> Result<Record> {
        let _writing = self.write_lock()?;
        let record = make(&self.all()?)?;
        let dir = self.dir_for_writing()?;
        let older = Store::toml_file_name(record.unit());
        if rustix::fs::statat(&dir, older.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(self.refusal(record.unit(), record.host_path()));
        }
        let durable = record.channel.cleanup_unit.is_some();
        match self.link_new(&dir, &record, &Store::file_name(record.unit()), durable) {
            Ok(()) => Ok(record),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(self.refusal(record.unit(), record.host_path()))
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// The error for a create at `host_path` that found `unit`'s record written: it names the
    /// channel that has it.
    fn refusal(&self, unit: &str, host_path: &Path) -> Error {
        match self.load(unit) {
            Ok(Some(existing)) => existing.refuses(host_path),
            _ => Error::already_exists(format!(
                "cannot create channel {}: hostchan has a record of {unit} already; see hostchan status {unit}",
                host_path.display()
            )),
        }
    }

    /// Replaces a record this process wrote (the same channel id) with a new version of it,
    /// atomically: readers see the old or the new one, never neither.
    pub fn replace(&self, record: &Record) -> Result<()> {
        let _writing = self.write_lock()?;
        let dir = self.dir_for_writing()?;
        let name = Store::file_name(record.unit());
        // Short whatever the unit name's length (a name can be 255 bytes already).
        let staged = format!(".new-{}", record.channel.id);
        let replaced = self
            .link_new(&dir, record, &staged, false)
            .and_then(|()| renameat(&dir, &staged, &dir, &name).map_err(io::Error::from));
        replaced.map_err(|e| {
            let _ = unlinkat(&dir, &staged, AtFlags::empty());
            self.write_error(e)
        })?;
        // The JSON record stands: the TOML one it was read from goes.
        match unlinkat(&dir, Store::toml_file_name(record.unit()), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.write_error(e.into())),
        }
    }

    fn dir_for_writing(&self) -> Result<OwnedFd> {
        self.open_dir(true)?.ok_or_else(|| {
            Error::runtime(format!(
                "cannot write channel record in {}",
                self.dir.display()
            ))
        })
    }

    fn write_error(&self, err: io::Error) -> Error {
        fs_error(
            format!("cannot write channel record in {}", self.dir.display()),
            err,
        )
    }

    /// Writes `record` unnamed and links it in as `name`; `sync` makes it durable first.
    fn link_new(&self, dir: &OwnedFd, record: &Record, name: &str, sync: bool) -> io::Result<()> {
        let mut text = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
        text.push('\n');
        let file = openat(
            dir,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = fs::File::from(file);
        fchmod(&file, Mode::from_raw_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        if sync {
            file.sync_all()?;
        }
        linkat(&file, "", dir, name, AtFlags::EMPTY_PATH)?;
        Ok(())
    }
    pub fn load(&self, unit: &str) -> Result<Option<Record>> {
        match self.open_dir(false)? {
            Some(dir) => self.read_unit(&dir, unit),
            None => Ok(None),
        }
    }

    /// The record of a unit: the JSON file, or else a TOML one an older hostchan wrote.
    fn read_unit(&self, dir: &OwnedFd, unit: &str) -> Result<Option<Record>> {
        let name = Store::file_name(unit);
        if let Some(record) = read_record(dir, &name, &self.dir.join(&name), Format::Json)? {
            return Ok(Some(record));
        }
        let name = Store::toml_file_name(unit);
        read_record(dir, &name, &self.dir.join(&name), Format::Toml)
    }

    /// Removes the record of the channel with this id; `false` when there is none, or when the
    /// record under that name is another channel's (a create for the same path that came
    /// after).
    pub fn remove(&self, unit: &str, id: &str) -> Result<bool> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(false);
        };
        let _writing = self.write_lock()?;
        match self.read_unit(&dir, unit)? {
            Some(record) if record.channel.id == id => {}
            Some(record) => {
                tracing::info!(
                    OBJECT_SYSTEMD_UNIT = %unit,
                    "left the record of {}: it is channel {}, not {id}",
                    record.host_path().display(),
                    record.channel.id
                );
                return Ok(false);
            }
            None => return Ok(false),
        }
        let mut removed = false;
        for name in [Store::file_name(unit), Store::toml_file_name(unit)] {
            match unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) => removed = true,
                Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot remove {}", self.dir.join(&name).display()),
                        e,
                    ))
                }
            }
        }
        Ok(removed)
    }

    /// Removes files a killed `replace` left (`.new-*`) and those of older hostchans
    /// (`.tmp-*`); only safe while no create is under way, that is under the exclusive lock.
    pub fn remove_stale_files(&self, _exclusive: &StoreLock) -> Result<Vec<String>> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        let entries = rustix::fs::Dir::read_from(&dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            // A creator lock is stale too: creates hold `.lock` shared while they hold theirs.
            if (name.starts_with(".new-")
                || name.starts_with(".tmp-")
                || name.starts_with(".creating-"))
                && unlinkat(&dir, name, AtFlags::empty()).is_ok()
            {
                removed.push(name.to_owned());
            }
        }
        Ok(removed)
    }

    /// The mount units of all records, from the file names alone (no record is read).
    pub fn unit_names(&self) -> Result<Vec<String>> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(Vec::new());
        };
        let entries = rustix::fs::Dir::read_from(&dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        let mut units: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str().ok()?;
                let stem = name
                    .strip_suffix(".json")
                    .or_else(|| name.strip_suffix(".toml"))?;
                (!name.starts_with('.')).then(|| format!("{stem}.mount"))
            })
            .collect();
        // A crash between writing a JSON record and removing the TOML one leaves both.
        units.sort_unstable();
        units.dedup();
        Ok(units)
    }

    /// Every record, sorted by host path. Records that cannot be read or trusted are reported,
    /// not acted on.
    pub fn all(&self) -> Result<Vec<Record>> {
        let mut records = self.records_of_units(&self.unit_names()?)?;
        records.sort_by(|a, b| a.host_path().cmp(b.host_path()));
        Ok(records)
    }

    /// The records of these units, in their order, leaving out the ones that went meanwhile;
    /// records that cannot be read or trusted are reported, not acted on.
    pub fn records_of_units(&self, units: &[String]) -> Result<Vec<Record>> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(Vec::new());
        };
        let mut records = Vec::with_capacity(units.len());
        for unit in units {
            match self.read_unit(&dir, unit) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping channel record: {e}"),
            }
        }
        Ok(records)
    }
}

/// Refuses a file or directory that someone other than hostchan's user could have written.
fn check_owned(fd: &OwnedFd, path: &Path) -> Result<()> {
    let stat = fstat(fd).with_context(|| format!("cannot look at {}", path.display()))?;
    check_owned_stat(&stat, path)
}

fn check_owned_stat(stat: &rustix::fs::Stat, path: &Path) -> Result<()> {
    // Once per process (hostchan never changes its user): `list` checks every record.
    static OWNER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let owner = *OWNER.get_or_init(|| rustix::process::geteuid().as_raw());
    let mode = stat.st_mode & 0o7777;
    if stat.st_uid != owner || mode & 0o022 != 0 {
        return Err(Error::runtime(format!(
            "{} is owned by uid {} with mode {mode:04o}: channel records must be root's alone (owner {owner}, not writable by group or others); hostchan does not act on it",
            path.display(),
            stat.st_uid
        )));
    }
    Ok(())
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    /// Version 2, written before records became JSON.
    Toml,
}

fn read_record(dir: &OwnedFd, name: &str, path: &Path, format: Format) -> Result<Option<Record>> {
    // O_NONBLOCK: a FIFO planted under a record's name must not hang the reader.
    let fd = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    // One fstat for the owner, the type and the size: `list` reads every record.
    let stat = fstat(&fd).with_context(|| format!("cannot look at {}", path.display()))?;
    check_owned_stat(&stat, path)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::runtime(format!(
            "{} is not a regular file; hostchan does not act on it",
            path.display()
        )));
    }
    let text =
        read_whole(&fd, stat.st_size).with_context(|| format!("cannot read {}", path.display()))?;
    let damaged = |message: String| {
        Error::runtime(format!(
            "channel record {} is damaged: {message}",
            path.display()
        ))
    };
    let (mut record, known): (Record, u32) = match format {
        Format::Json => (
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?,
            RECORD_VERSION,
        ),
        Format::Toml => (
            toml::from_str(&text).map_err(|e| damaged(e.message().to_owned()))?,
            TOML_RECORD_VERSION,
        ),
    };
    if record.version != known {
        return Err(Error::runtime(format!(
            "channel record {} has version {}, this hostchan reads version {known} there",
            path.display(),
            record.version
        )));
    }
    record.version = RECORD_VERSION;
    Ok(Some(record))
}

/// Reads a record whose size fstat gave: one `read` where `read_to_string` makes four calls
/// (`list` reads every record). A record never changes in place (it is replaced by rename, and
/// this descriptor keeps the file it opened), so the size holds; a file that ends early is
/// read to its end.
fn read_whole(fd: &OwnedFd, size: i64) -> io::Result<String> {
    let mut buffer = vec![0; usize::try_from(size).unwrap_or(0)];
    let mut filled = 0;
    while filled < buffer.len() {
        match rustix::io::read(fd, &mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buffer.truncate(filled);
    String::from_utf8(buffer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_scratch::Scratch;

    fn record(unit: &str) -> Record {
        Record::new(
            Channel {
                id: "c0ffee".into(),
                spec: ChannelSpec {
                    host_path: "/run/chan/c1".into(),
                    container_path: "/chan".into(),
                    access: Access::Ro,
                    size: 4096,
                },
                owner: Some("ctr.scope".into()),
                container: None,
                pod: None,
                unit: unit.into(),
                cleanup_unit: Some(format!("hostchan-cleanup@{unit}.service")),
                created: 1,
                lifetime: crate::model::Lifetime::Stop,
                root_owner: None,
            },
            vec![MadeDir {
                path: "/run/chan/c1".into(),
                dev: 7,
                ino: 42,
            }],
        )
    }

    /// A pod container's channel was written as `stop` before the container lifetime was
    /// recorded as itself; it reads as `container`, and is written so from then on.
    #[test]
    fn the_container_lifetime_is_itself_in_old_records_too() {
        let mut old = record("run-chan-c1.mount");
        old.channel.pod = Some("sandbox1".into());
        let text = serde_json::to_string(&old).unwrap();
        assert!(text.contains(r#""lifetime":"stop""#), "{text}");
        let fields: RecordFields = serde_json::from_str(&text).unwrap();
        let read = Record::from(fields);
        assert_eq!(read.channel.lifetime, crate::model::Lifetime::Container);
        let again = serde_json::to_string(&read).unwrap();
        assert!(again.contains(r#""lifetime":"container""#), "{again}");
        // Without a pod, `stop` is the hook's and the CLI's own lifetime.
        let plain: RecordFields =
            serde_json::from_str(&serde_json::to_string(&record("run-chan-c2.mount")).unwrap())
                .unwrap();
        assert_eq!(
            Record::from(plain).channel.lifetime,
            crate::model::Lifetime::Stop
        );
    }

    #[test]
    fn the_file_is_readable_json() {
        let text = serde_json::to_string_pretty(&record("run-chan-c1.mount")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "version": 3, "id": "c0ffee", "host_path": "/run/chan/c1",
                "container_path": "/chan", "mode": "ro", "size": 4096, "owner": "ctr.scope",
                "unit": "run-chan-c1.mount",
                "cleanup_unit": "hostchan-cleanup@run-chan-c1.mount.service", "created": 1,
                "lifetime": "stop", "last_seen": 1, "idle_limit": 0,
                "made": [{"path": "/run/chan/c1", "dev": 7, "ino": 42}]
            })
        );
    }

    /// A record an older hostchan wrote (version 2, TOML) is read, blocks a create at its path,
    /// is rewritten as JSON at its next change, and goes with `remove`.
    #[test]
    fn toml_records_of_older_hostchans_are_read_and_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new("record-v2");
        let dir = scratch.0.join("channels");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let older = dir.join("run-chan-c1.toml");
        fs::write(
            &older,
            "version = 2\nid = \"c0ffee\"\nhost_path = \"/run/chan/c1\"\ncontainer_path = \"/chan\"\nmode = \"ro\"\nsize = 4096\nowner = \"ctr.scope\"\nunit = \"run-chan-c1.mount\"\ncleanup_unit = \"hostchan-cleanup@run-chan-c1.mount.service\"\ncreated = 1\nlifetime = \"stop\"\nlast_seen = 1\nidle_limit = 0\n\n[[made]]\npath = \"/run/chan/c1\"\ndev = 7\nino = 42\n",
        )
        .unwrap();
        fs::set_permissions(&older, fs::Permissions::from_mode(0o600)).unwrap();
        let store = Store::new(dir.clone());
        let r = record("run-chan-c1.mount");
        assert_eq!(store.load(r.unit()).unwrap(), Some(r.clone()));
        assert_eq!(store.unit_names().unwrap(), ["run-chan-c1.mount"]);
        let err = store.create_checked(|_| Ok(r.clone())).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::AlreadyExists, "{err}");

        store.replace(&r).unwrap();
        assert!(!older.exists());
        assert!(store.path_of(r.unit()).exists());
        assert_eq!(store.all().unwrap(), vec![r.clone()]);

        fs::write(&older, "version = 2\n").unwrap();
        fs::set_permissions(&older, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(store.unit_names().unwrap(), ["run-chan-c1.mount"]);
        assert!(store.remove(r.unit(), "c0ffee").unwrap());
        assert!(!older.exists() && !store.path_of(r.unit()).exists());
    }

    #[test]
    fn create_is_exclusive_and_round_trips() {
        let scratch = Scratch::new("record");
        let dir = scratch.0.join("channels");
        let store = Store::new(dir.clone());
        let r = record("run-chan-c1.mount");
        store.create_checked(|_| Ok(r.clone())).unwrap();
        assert_eq!(store.path_of(r.unit()), dir.join("run-chan-c1.json"));
        assert_eq!(store.load(r.unit()).unwrap(), Some(r.clone()));
        let err = store.create_checked(|_| Ok(r.clone())).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::AlreadyExists, "{err}");
        assert_eq!(store.all().unwrap(), vec![r.clone()]);
        assert!(store.remove(r.unit(), "c0ffee").unwrap());
        assert!(!store.remove(r.unit(), "c0ffee").unwrap());
        assert_eq!(store.load(r.unit()).unwrap(), None);
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != ".write.lock")
            .collect();
        assert_eq!(left, Vec::<std::ffi::OsString>::new(), "files left behind");
    }

    #[test]
    fn stale_files_of_killed_writers_go_and_records_stay() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new("record-stale");
        let dir = scratch.0.join("channels");
        let store = Store::new(dir.clone());
        let r = record("run-chan-c1.mount");
        store.create_checked(|_| Ok(r.clone())).unwrap();
        for stale in [".new-c0ffee", ".tmp-42-0"] {
            fs::write(dir.join(stale), "half").unwrap();
            fs::set_permissions(dir.join(stale), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let lock = store.lock(true).unwrap();
        let mut removed = store.remove_stale_files(&lock).unwrap();
        removed.sort();
        assert_eq!(removed, [".new-c0ffee", ".tmp-42-0"]);
        assert_eq!(store.all().unwrap(), vec![r.clone()]);
        assert!(dir.join(".lock").exists());
        drop(lock);
    }

    #[test]
    fn records_are_their_owners_alone() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let scratch = Scratch::new("record-own");
        let dir = scratch.0.join("channels");
        let store = Store::new(dir.clone());
        let r = record("run-chan-c1.mount");
        store.create_checked(|_| Ok(r.clone())).unwrap();
        let mode = |path: &Path| fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.path_of(r.unit())), 0o600);

        // Writable by others: refused by load, skipped by all, whatever it says.
        fs::set_permissions(store.path_of(r.unit()), fs::Permissions::from_mode(0o666)).unwrap();
        let err = store.load(r.unit()).unwrap_err().to_string();
        assert!(err.contains("must be root's alone"), "{err}");
        assert!(err.contains("mode 0666"), "{err}");
        assert_eq!(store.all().unwrap(), vec![]);
        fs::remove_file(store.path_of(r.unit())).unwrap();

        // A symlink or a FIFO under a record's name is never followed nor waited on.
        fs::write(dir.join("elsewhere"), serde_json::to_string(&r).unwrap()).unwrap();
        symlink(dir.join("elsewhere"), store.path_of(r.unit())).unwrap();
        assert!(store.load(r.unit()).is_err());
        fs::remove_file(store.path_of(r.unit())).unwrap();
        nix::unistd::mkfifo(
            &store.path_of(r.unit()),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = store.load(r.unit()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        fs::remove_file(store.path_of(r.unit())).unwrap();

        // A directory others can write: nothing in it is trusted.
        store.create_checked(|_| Ok(r.clone())).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(store.load(r.unit()).is_err());
        assert!(store.all().is_err());
        assert!(store.remove(r.unit(), "c0ffee").is_err());
        assert!(store.path_of(r.unit()).exists());
    }

    #[test]
    fn damaged_record_is_an_error_naming_the_file() {
        let scratch = Scratch::new("record-bad");
        let dir = scratch.0.join("channels");
        fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        for (name, text) in [
            ("x.json", "{\"version\": 3, \"bogus\": true}\n"),
            ("y.toml", "version = 1\nbogus = true\n"),
        ] {
            fs::write(dir.join(name), text).unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o600)).unwrap();
            let unit = name.replace(".json", ".mount").replace(".toml", ".mount");
            let err = Store::new(dir.clone()).load(&unit).unwrap_err().to_string();
            assert!(err.contains(&format!("{name} is damaged")), "{err}");
        }
    }
}
