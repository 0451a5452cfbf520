//! The lifecycle of a channel: create, delete, list, status and the cleanup after unmount,
//! composed from the spec, the units, the systemd client and the record store.

use std::path::{Path, PathBuf};

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::config::{Config, Lifetime, Requester};
use crate::error::{Context, Error, Kind, Result};
use crate::fail_point;
use crate::hostfs::{self, MadeDir};
use crate::inject::{self, AttachPoint};
use crate::owner::{self, MemoryChange, Owner};
use crate::record::{Record, Store, StoreLock};
use crate::spec::{self, ChannelSpec, RootOwner};
use crate::systemd::{Job, Memory, Systemd, UnitStatus};
use crate::unit_name;
use crate::units::{self, ChannelRequest, ChannelUnits, TransientUnit};

/// What `create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub spec: String,
    pub owner: Owner,
    pub container: Option<String>,
    pub dry_run: bool,
    /// Also attach the channel inside this container.
    pub attach: Option<AttachTo>,
    /// Raise the owner's memory limit by the channel's size.
    pub grow_memory_limit: bool,
    pub requester: Requester,
    pub lifetime: Lifetime,
    /// The owner of the channel's root directory; root when `None`.
    pub root_owner: Option<RootOwner>,
    /// The owner unit was named by the caller (`--scope`), not found from a process's cgroup.
    pub owner_named: bool,
}

/// The container a channel is attached in.
#[derive(Debug, Clone)]
pub struct AttachTo {
    pub pid: i32,
    /// The container's future root, inside its mount namespace, before it pivots into it.
    pub rootfs: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Created {
    /// The units that would have been started.
    DryRun(ChannelUnits),
    Channel(Box<ChannelInfo>),
    /// The container's channel, found made already with the same spec (and attached in the
    /// container now running): see [`Channels::reuse`].
    Existing(Box<ChannelInfo>),
}

/// A create that failed: which of the requests, and why.
#[derive(Debug)]
pub struct CreateFailed {
    pub index: usize,
    pub error: Error,
}

/// A channel whose record and directories exist and whose units are not started yet.
struct Pending<'a> {
    /// Which of the requests it is.
    index: usize,
    options: &'a CreateOptions,
    spec: ChannelSpec,
    units: ChannelUnits,
    record: Record,
    /// The directories this create made (the record also names parents other channels made).
    made: Vec<MadeDir>,
    /// Held until the channel is up, so that a concurrent `gc` does not take it for a leftover.
    _creating: StoreLock,
}

enum Prepared<'a> {
    Done(Created),
    Pending(Box<Pending<'a>>),
}

/// One channel: what was asked for, who owns it and which units carry it. The same value is
/// recorded, listed, shown and reported by gc. Records are read as
/// [`crate::record::Record`]'s flat fields, so a channel is only ever written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    /// Random, made at create: what the cleanup unit, delete and gc check before they remove
    /// anything, so that they act on this channel and never on a later one at the same path.
    pub id: String,
    #[serde(flatten)]
    pub spec: ChannelSpec,
    /// The unit the channel is bound to; absent for an unbound channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub unit: String,
    pub cleanup_unit: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub lifetime: Lifetime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_owner: Option<RootOwner>,
}

/// Where a channel stands: systemd's active state of its mount unit, or what hostchan knows
/// beyond it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Active,
    Activating,
    Deactivating,
    Reloading,
    Inactive,
    Failed,
    /// An active state this hostchan does not know by name.
    Other(String),
    /// systemd no longer has the unit: a leftover of a crash or reboot.
    Gone,
    /// `delete` just removed it.
    Deleted,
}

impl State {
    pub fn of_unit(active_state: &str) -> State {
        match active_state {
            "active" => State::Active,
            "activating" => State::Activating,
            "deactivating" => State::Deactivating,
            "reloading" => State::Reloading,
            "inactive" => State::Inactive,
            "failed" => State::Failed,
            other => State::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            State::Active => "active",
            State::Activating => "activating",
            State::Deactivating => "deactivating",
            State::Reloading => "reloading",
            State::Inactive => "inactive",
            State::Failed => "failed",
            State::Other(state) => state,
            State::Gone => "gone",
            State::Deleted => "deleted",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A channel as `list` and `status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    #[serde(flatten)]
    pub channel: Channel,
    /// Bytes in use; only known while the channel is mounted.
    pub used: Option<u64>,
    pub state: State,
    pub sub_state: String,
    /// Set by `create --grow-memory-limit` when it changed a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<MemoryChange>,
}

impl ChannelInfo {
    pub fn host_path(&self) -> &Path {
        &self.channel.spec.host_path
    }

    fn deleted(channel: Channel) -> ChannelInfo {
        ChannelInfo {
            used: None,
            state: State::Deleted,
            sub_state: String::new(),
            memory_limit: None,
            channel,
        }
    }

    /// A channel just made or found mounted.
    fn mounted(record: Record) -> ChannelInfo {
        ChannelInfo {
            used: hostfs::used_bytes(record.host_path()),
            state: State::Active,
            sub_state: "mounted".into(),
            memory_limit: record.memory_limit,
            channel: record.channel,
        }
    }
}

/// A channel named on the command line: by host path or by mount unit name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub unit: String,
    pub shown: String,
}

impl Target {
    pub fn of_unit(unit: &str) -> Target {
        Target {
            unit: unit.to_owned(),
            shown: unit.to_owned(),
        }
    }

    pub fn parse(text: &str) -> Result<Target> {
        if text.starts_with('/') {
            let path = spec::normalize_absolute("host path", text)?;
            return Ok(Target {
                unit: unit_name::mount_unit_name(&path),
                shown: path.display().to_string(),
            });
        }
        if text.ends_with(".mount") && !text.contains('/') {
            return Ok(Target {
                unit: text.to_owned(),
                shown: text.to_owned(),
            });
        }
        Err(Error::invalid(
            "channel",
            text,
            "expected a host path (/run/...) or a .mount unit name",
        ))
    }
}

pub struct Channels {
    store: Store,
    hostchan_binary: PathBuf,
    /// One connection for everything this process does, made when first needed.
    systemd: std::cell::OnceCell<Systemd>,
}

impl Channels {
    /// `hostchan_binary` is what the cleanup units run later.
    pub fn new(hostchan_binary: PathBuf) -> Channels {
        Channels {
            store: Store::default(),
            hostchan_binary,
            systemd: std::cell::OnceCell::new(),
        }
    }

    fn systemd(&self) -> Result<&Systemd> {
        if self.systemd.get().is_none() {
            let _ = self.systemd.set(Systemd::connect()?);
        }
        self.systemd
            .get()
            .ok_or_else(|| Error::systemd("cannot connect to systemd"))
    }

    /// Creates one channel; see [`Channels::create_all`].
    pub fn create(&self, config: &Config, options: &CreateOptions) -> Result<Created> {
        let mut created = self
            .create_all(config, std::slice::from_ref(options))
            .map_err(|failed| failed.error)?;
        created
            .pop()
            .ok_or_else(|| Error::runtime("create made nothing"))
    }

    /// Creates these channels, all or none. Each is checked, recorded and its directories made;
    /// then the units of all are started at once (one connection, the jobs in flight together,
    /// so that PID 1 takes the mounts in as few passes over its mount table as it can); then
    /// each is attached in its container. On a failure the channels this call made are taken
    /// down again, and the error says which request failed.
    pub fn create_all(
        &self,
        config: &Config,
        requests: &[CreateOptions],
    ) -> std::result::Result<Vec<Created>, CreateFailed> {
        let mut done: Vec<(usize, Created)> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut active_owners = HashSet::new();
        for (index, options) in requests.iter().enumerate() {
            match self.prepare(config, options, index, &mut active_owners) {
                Ok(Prepared::Done(created)) => done.push((index, created)),
                Ok(Prepared::Pending(one)) => pending.push(*one),
                Err(error) => {
                    self.abandon(&pending);
                    return Err(CreateFailed { index, error });
                }
            }
        }
        if !pending.is_empty() {
            done.extend(self.start_all(pending)?);
        }
        done.sort_by_key(|(index, _)| *index);
        Ok(done.into_iter().map(|(_, created)| created).collect())
    }

    /// Everything up to starting the units: the checks, the record, the directories. A channel
    /// found made already, or a dry run, is done here.
    /// `active_owners`: owner units found running already by this create (the channels of
    /// one container share one).
    fn prepare<'a>(
        &self,
        config: &Config,
        options: &'a CreateOptions,
        index: usize,
        active_owners: &mut HashSet<String>,
    ) -> Result<Prepared<'a>> {
        let spec = ChannelSpec::parse(&options.spec, &config.limits())?;
        config.check_host_path(&spec.host_path, options.requester)?;
        if config.channels.check_available_memory {
            config.check_available_memory(spec.size)?;
        }
        if options.owner == Owner::Unbound && !config.owner.allow_unbound {
            return Err(Error::usage(format!(
                "unbound channels are turned off in {} (owner.allow_unbound = false); bind the channel to its container with --scope or --pid",
                config.origin()
            )));
        }
        let id = new_channel_id()?;
        let request = ChannelRequest {
            spec: &spec,
            owner: &options.owner,
            container: options.container.as_deref(),
            tmpfs: &config.tmpfs,
            hostchan_binary: &self.hostchan_binary,
            id: &id,
            root_owner: options.root_owner,
        };
        let units = units::channel_units(&request);
        if let Some(record) = self.store.load(&units.mount.name)? {
            if options.dry_run {
                return Err(record.already_a_channel());
            }
            return self.reuse(record, &spec, options).map(Prepared::Done);
        }
        if options.dry_run {
            // A real create makes these checks once, in its critical section below.
            hostfs::check_free(&spec.host_path)?;
            check_among_channels(&spec.host_path, &self.store.all()?)?;
            return Ok(Prepared::Done(Created::DryRun(units)));
        }

        if let Some(attach) = &options.attach {
            let ns = format!("/proc/{}/ns/mnt", attach.pid);
            if std::fs::symlink_metadata(&ns).is_err() {
                return Err(Error::owner(format!(
                    "pid {} does not exist (no {ns}); give the pid of the container's init",
                    attach.pid
                )));
            }
            owner::check_container_process(attach.pid)?;
            inject::check_other_mount_namespace(attach.pid)?;
        }
        let systemd = self.systemd()?;
        // A delete-lifetime owner is the unit hostchan keeps, started below once the record
        // stands, so that a refused create never leaves one behind.
        let keeper = match (options.lifetime, &options.owner, &options.container) {
            (Lifetime::Delete, Owner::Unit(keeper), Some(container)) => Some((keeper, container)),
            _ => None,
        };
        if let (None, Owner::Unit(owner)) = (keeper, &options.owner) {
            if !active_owners.contains(owner) {
                owner::check_owner_active(systemd, owner, options.owner_named)?;
                active_owners.insert(owner.clone());
            }
        }
        let creating = self.store.lock(false)?;
        // The record first, naming the directories about to be made, so that a crash at any
        // later point leaves nothing gc cannot find; the checks against other channels and the
        // write are one step.
        let channel = Channel {
            id: id.clone(),
            spec: spec.clone(),
            owner: options.owner.unit().map(str::to_owned),
            container: options.container.clone(),
            unit: units.mount.name.clone(),
            cleanup_unit: units.cleanup.name.clone(),
            created: seconds_since_epoch(),
            lifetime: options.lifetime,
            root_owner: options.root_owner,
        };
        let mut shared = Vec::new();
        let mut record = self.store.create_checked(|records| {
            shared = check_among_channels(&spec.host_path, records)?;
            let planned = hostfs::plan_host_path(&spec.host_path)?;
            let mut record = Record::new(channel, [shared.clone(), planned].concat());
            record.idle_limit = config.channels.idle_limit;
            Ok(record)
        })?;
        fail_point::hit("after-record");
        if let Some((keeper, container)) = keeper {
            if let Err(e) = ensure_keeper(systemd, keeper, container) {
                let _ = self.store.remove(record.unit(), &id);
                return Err(e);
            }
        }
        // hostchan makes the directories itself, so that systemd's mount finds them and never
        // follows a symlink someone put on the way.
        let made = match hostfs::make_host_path(&spec.host_path) {
            Ok(made) => made,
            Err(e) => {
                let _ = self.store.remove(record.unit(), &id);
                return Err(e);
            }
        };
        record.made = [shared, made.clone()].concat();
        if let Err(e) = self.store.replace(&record) {
            let _ = hostfs::remove_made(&made);
            let _ = self.store.remove(record.unit(), &id);
            return Err(e);
        }
        fail_point::hit("after-dirs");
        Ok(Prepared::Pending(Box::new(Pending {
            index,
            options,
            spec,
            units,
            record,
            made,
            _creating: creating,
        })))
    }

    /// Starts the units of all these channels with every job queued before the first wait,
    /// then completes each. Takes all of them down again on the first failure.
    fn start_all(
        &self,
        mut pending: Vec<Pending>,
    ) -> std::result::Result<Vec<(usize, Created)>, CreateFailed> {
        let failed = |index: usize, error: Error| CreateFailed { index, error };
        let systemd = match self.systemd() {
            Ok(systemd) => systemd,
            Err(e) => {
                self.abandon(&pending);
                return Err(failed(pending[0].index, e));
            }
        };
        let cleanups: Vec<[&TransientUnit; 1]> =
            pending.iter().map(|one| [&one.units.cleanup]).collect();
        let starts: Vec<(&TransientUnit, &[&TransientUnit])> = pending
            .iter()
            .zip(&cleanups)
            .map(|(one, cleanup)| (&one.units.mount, &cleanup[..]))
            .collect();
        let queued = match systemd.queue_start_transient_all(&starts) {
            Ok(queued) => queued,
            Err(e) => {
                self.abandon(&pending);
                return Err(failed(pending[0].index, e));
            }
        };
        let mut jobs = Vec::new();
        let mut refused = None;
        for (at, result) in queued.into_iter().enumerate() {
            match result {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    refused.get_or_insert((at, e));
                }
            }
        }
        let outcomes = systemd.wait(&jobs);
        if let Some((at, e)) = refused {
            let one = &pending[at];
            let error = if e.kind() == Kind::AlreadyExists {
                // Someone else's unit has this name: leave it alone, take back only what we made.
                self.abandon(std::slice::from_ref(one));
                Error::already_exists(format!(
                    "cannot create channel {}: {e}; a unit of that name exists that hostchan did not make",
                    one.record.host_path().display()
                ))
            } else {
                e
            };
            let index = one.index;
            let others: Vec<Pending> = pending
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != at || error.kind() != Kind::AlreadyExists)
                .map(|(_, one)| one)
                .collect();
            self.roll_back(systemd, &others);
            return Err(failed(index, error));
        }
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.roll_back(systemd, &pending);
                return Err(failed(pending[0].index, e));
            }
        };
        if let Some((one, outcome)) = pending
            .iter()
            .zip(&outcomes)
            .find(|(_, outcome)| !outcome.succeeded())
        {
            let error = outcome.error("start", one.options.owner.unit());
            let index = one.index;
            self.roll_back(systemd, &pending);
            return Err(failed(index, error));
        }
        // Channels of one container share its owner: its memory is read once for all of them
        // (a raise with --grow-memory-limit reads it again, right before).
        let mut owner_memory: HashMap<String, Option<Memory>> = HashMap::new();
        let several = pending.len() > 1;
        for at in 0..pending.len() {
            let one = &mut pending[at];
            let memory = match &one.options.owner {
                Owner::Unit(owner) if several => *owner_memory
                    .entry(owner.clone())
                    .or_insert_with(|| systemd.memory(owner).ok()),
                _ => None,
            };
            if let Err(e) = self.complete(systemd, &one.spec, one.options, &mut one.record, memory)
            {
                let index = one.index;
                self.roll_back(systemd, &pending);
                return Err(failed(index, e));
            }
        }
        Ok(pending
            .into_iter()
            .map(|one| {
                let spec = &one.spec;
                tracing::info!(
                    OBJECT_SYSTEMD_UNIT = %one.record.unit(),
                    "created channel {} -> {} ({}, {} bytes), owner {}",
                    spec.host_path.display(),
                    spec.container_path.display(),
                    spec.access,
                    spec.size,
                    one.options.owner,
                );
                (
                    one.index,
                    Created::Channel(Box::new(ChannelInfo::mounted(one.record))),
                )
            })
            .collect())
    }

    /// A create for a path that is a channel already: the same container asking again with the
    /// same spec gets that channel (attached in the container now running, if it is not yet):
    /// a `delete`-lifetime channel at the container's next start, or a second hook (hooks.d
    /// and CDI) in the same start. Anything else is "already a channel".
    fn reuse(
        &self,
        mut record: Record,
        spec: &ChannelSpec,
        options: &CreateOptions,
    ) -> Result<Created> {
        let same = options.container.is_some()
            && record.channel.container == options.container
            && &record.channel.spec == spec
            && record.channel.lifetime == options.lifetime
            && hostfs::is_mount_point(record.host_path())?;
        if !same {
            return Err(record.already_a_channel());
        }
        if let Some(attach) = &options.attach {
            let here = record
                .attached
                .as_ref()
                .is_some_and(|a| inject::is_attached_in(a, attach.pid));
            if !here {
                owner::check_container_process(attach.pid)?;
                inject::check_other_mount_namespace(attach.pid)?;
                let attached = attach_in_container(spec, attach)?;
                record.attached = Some(attached);
            }
        }
        record.last_seen = seconds_since_epoch();
        self.store.replace(&record)?;
        Ok(Created::Existing(Box::new(ChannelInfo::mounted(record))))
    }

    /// The steps after the host side is up; a failure here rolls the host side back.
    /// What it did goes into the record, for delete to undo.
    fn complete(
        &self,
        systemd: &Systemd,
        spec: &ChannelSpec,
        options: &CreateOptions,
        record: &mut Record,
        owner_memory: Option<Memory>,
    ) -> Result<()> {
        if let Some(attach) = &options.attach {
            fail_point::hit("before-attach");
            record.attached = Some(attach_in_container(spec, attach)?);
            self.store.replace(record)?;
        }
        if let Owner::Unit(owner) = &options.owner {
            record.memory_limit = owner::memory_headroom(
                systemd,
                owner,
                spec.size,
                options.grow_memory_limit,
                owner_memory,
            )?;
            if record.memory_limit.is_some() {
                self.store.replace(record)?;
            }
        }
        Ok(())
    }

    /// Undoes creates whose units were (or may have been) started: detaches the copies made
    /// in containers and gives back memory limits raised for them, stops whatever systemd still
    /// has of them (all stops queued before the wait), then removes the directories (only if
    /// empty) and the records.
    fn roll_back(&self, systemd: &Systemd, pending: &[Pending]) {
        for one in pending {
            let record = &one.record;
            if let Err(e) = detach_copy(record) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "rolling back: {e}");
            }
            if let Some(change) = &record.memory_limit {
                if let Err(e) = owner::undo_memory_change(systemd, change) {
                    tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "rolling back: {e}");
                }
            }
        }
        let mut jobs = Vec::new();
        for record in pending.iter().map(|one| &one.record) {
            for unit in [record.unit(), &record.channel.cleanup_unit] {
                match systemd.queue_stop(unit) {
                    Ok(job) => jobs.extend(job),
                    Err(e) => {
                        tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "rolling back: cannot stop {unit}: {e}")
                    }
                }
            }
        }
        if let Err(e) = systemd.wait(&jobs) {
            tracing::warn!("rolling back: {e}");
        }
        for record in pending.iter().map(|one| &one.record) {
            // Unless the cleanup unit's stop already did it.
            let removed = match self.store.load(record.unit()) {
                Ok(Some(left)) if left.channel.id == record.channel.id => {
                    self.remove_leftovers(&left).map(drop)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "rolling back: {e}");
            }
        }
    }

    /// Undoes creates whose units were never started: their directories and records.
    fn abandon(&self, pending: &[Pending]) {
        for one in pending {
            if let Err(e) = hostfs::remove_made(&one.made) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %one.record.unit(), "rolling back: {e}");
            }
            if let Err(e) = self.store.remove(one.record.unit(), &one.record.channel.id) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %one.record.unit(), "rolling back: {e}");
            }
        }
    }

    pub fn delete(&self, target: &Target) -> Result<ChannelInfo> {
        self.delete_one(target, true)
    }

    /// `stop_idle_keeper`: also stop the container's keeper unit if this was the last channel
    /// it kept; `delete --container` stops it itself, before it deletes the channels.
    fn delete_one(&self, target: &Target, stop_idle_keeper: bool) -> Result<ChannelInfo> {
        let record = self.load(target)?;
        let systemd = self.systemd()?;
        // The container's copy first, while the host mount still tells which tmpfs it is.
        detach_copy(&record)?;
        // The cleanup unit is bound to the mount: its stop job comes in the same transaction
        // and runs beside the unmount, waiting for it. Asking for it as well returns that job,
        // so one wait sees both end, and the directory is gone when delete returns.
        let jobs: Vec<Job> = [
            systemd.queue_stop(record.unit())?,
            systemd.queue_stop(&record.channel.cleanup_unit)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        for outcome in systemd.wait(&jobs)? {
            if outcome.unit == record.unit() && !outcome.succeeded() {
                return Err(outcome.error("stop", None));
            }
        }
        fail_point::hit("delete-after-stop");
        // The cleanup unit may have been gone already (a crash, a reboot): do its work here,
        // for this channel only (a create may have made a new one at the path meanwhile).
        if let Some(left) = self.store.load(record.unit())? {
            if left.channel.id == record.channel.id {
                self.remove_leftovers(&left)?;
            }
        }
        if let Some(change) = &record.memory_limit {
            owner::undo_memory_change(systemd, change)?;
        }
        if let (true, Lifetime::Delete, Some(container)) = (
            stop_idle_keeper,
            record.channel.lifetime,
            &record.channel.container,
        ) {
            self.stop_keeper_if_unused(container)?;
        }
        tracing::info!(
            OBJECT_SYSTEMD_UNIT = %record.unit(),
            "deleted channel {}",
            record.host_path().display()
        );
        Ok(ChannelInfo::deleted(record.channel))
    }

    /// The poststop hook: the container stopped. Its `stop`-lifetime channels are deleted (those
    /// its scope did not take already); its `delete`-lifetime ones stay, and are marked seen.
    pub fn container_stopped(&self, container: &str) -> Result<Vec<ChannelInfo>> {
        let mut stopped = Vec::new();
        for mut record in self.records_of(container)? {
            match record.channel.lifetime {
                Lifetime::Delete => {
                    record.last_seen = seconds_since_epoch();
                    self.store.replace(&record)?;
                }
                Lifetime::Stop => stopped.push(record),
            }
        }
        self.delete_records(container, stopped)
    }

    /// Deletes every channel labelled with this container id, both lifetimes; none is not an
    /// error. The unit that keeps its `delete`-lifetime channels goes first, which takes them
    /// all down in one job. Goes on past a channel it cannot delete, and reports every one that
    /// failed.
    pub fn delete_container(&self, container: &str) -> Result<Vec<ChannelInfo>> {
        let records = self.records_of(container)?;
        if records
            .iter()
            .any(|r| r.channel.lifetime == Lifetime::Delete)
        {
            // The copies in a running container first, while the host mounts say which tmpfs
            // is whose: stopping the unit takes only the host side down.
            for record in &records {
                detach_copy(record)?;
            }
            let keeper = unit_name::keeper_unit_name(container);
            if let Some(outcome) = self.systemd()?.stop(&keeper)? {
                if !outcome.succeeded() {
                    return Err(outcome.error("stop", None));
                }
            }
        }
        self.delete_records(container, records)
    }

    fn records_of(&self, container: &str) -> Result<Vec<Record>> {
        let mut records = self.store.all()?;
        records.retain(|r| r.channel.container.as_deref() == Some(container));
        Ok(records)
    }

    /// Stops the unit that keeps a container's `delete`-lifetime channels once it keeps none.
    fn stop_keeper_if_unused(&self, container: &str) -> Result<()> {
        let holds_more = self.store.all()?.iter().any(|r| {
            r.channel.container.as_deref() == Some(container)
                && r.channel.lifetime == Lifetime::Delete
        });
        if !holds_more {
            self.systemd()?
                .stop(&unit_name::keeper_unit_name(container))?;
        }
        Ok(())
    }

    /// Deletes these channels of `container`, going on past failures. A channel that went
    /// meanwhile (its owner stopped, or its keeper unit took it) counts as deleted if it was
    /// kept for the container, and is left out if its own owner took it.
    fn delete_records(&self, container: &str, records: Vec<Record>) -> Result<Vec<ChannelInfo>> {
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for record in records {
            match self.delete_one(&Target::of_unit(record.unit()), false) {
                Ok(info) => deleted.push(info),
                Err(e) if e.kind() == Kind::NotFound => {
                    if record.channel.lifetime == Lifetime::Delete {
                        deleted.push(ChannelInfo::deleted(record.channel));
                    }
                }
                Err(e) => failed.push(e),
            }
        }
        match Error::all_of(failed, |n| {
            format!(
                "{n} of {} channels of container {container} could not be deleted",
                n + deleted.len()
            )
        }) {
            None => Ok(deleted),
            Some(e) => Err(e),
        }
    }

    /// Every channel with its state: one `ListUnitsByNames` call for all (units named after
    /// the record files), asked on one thread while two others read the records and measure
    /// the tmpfs usage, so that systemd's answer and the reading overlap.
    pub fn list(&self) -> Result<Vec<ChannelInfo>> {
        let connected = self.systemd.get().is_some();
        let store = &self.store;
        let (send_names, names_to_ask) = std::sync::mpsc::channel::<Vec<String>>();
        let (names, read, asked) = std::thread::scope(|scope| {
            // Connects while the records directory is read; asks once it has the names.
            let asking = (!connected).then(|| {
                scope.spawn(move || {
                    let systemd = Systemd::connect();
                    let Ok(names) = names_to_ask.recv() else {
                        return Ok(None);
                    };
                    let systemd = systemd?;
                    let states = systemd.unit_states(&as_strs(&names))?;
                    Ok::<_, Error>(Some((systemd, states)))
                })
            });
            // Dropped on the way out, so that the asking thread never waits for names that
            // will not come (the scope joins it).
            let send_names = send_names;
            let names = match store.unit_names() {
                Ok(names) if !names.is_empty() => names,
                other => {
                    drop(send_names);
                    let asked =
                        asking.map(|thread| thread.join().unwrap_or_else(|_| Err(panicked())));
                    return (other, Ok(Vec::new()), asked);
                }
            };
            let _ = send_names.send(names.clone());
            drop(send_names);
            let readers: Vec<_> = names
                .chunks(names.len().div_ceil(LIST_READERS))
                .map(|units| {
                    let units = units.to_vec();
                    scope.spawn(move || {
                        let records = store.records_of_units(&units)?;
                        let mut usage = hostfs::Usage::default();
                        Ok::<_, Error>(
                            records
                                .into_iter()
                                .map(|record| {
                                    let used = usage.used_bytes(record.host_path());
                                    (record, used)
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                })
                .collect();
            let read: Result<Vec<_>> = readers
                .into_iter()
                .map(|reader| reader.join().unwrap_or_else(|_| Err(panicked())))
                .collect();
            let asked = asking.map(|thread| thread.join().unwrap_or_else(|_| Err(panicked())));
            (Ok(names), read, asked)
        });
        let names = names?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut records: Vec<(Record, Option<u64>)> = read?.into_iter().flatten().collect();
        records.sort_by(|a, b| a.0.host_path().cmp(b.0.host_path()));
        let mut states = match asked.transpose()?.flatten() {
            Some((systemd, states)) => {
                let _ = self.systemd.set(systemd);
                states
            }
            None => self.systemd()?.unit_states(&as_strs(&names))?,
        };
        // Records written after the directory was listed.
        let late: Vec<&str> = records
            .iter()
            .map(|(record, _)| record.unit())
            .filter(|unit| !states.contains_key(*unit))
            .collect();
        if !late.is_empty() {
            states.extend(self.systemd()?.unit_states(&late)?);
        }
        Ok(records
            .into_iter()
            .map(|(record, used)| {
                let status = states.get(record.unit());
                info(record, status, used)
            })
            .collect())
    }

    pub fn status(&self, target: &Target) -> Result<ChannelInfo> {
        let record = self.load(target)?;
        let systemd = self.systemd()?;
        let states = systemd.unit_states(&[record.unit()])?;
        let status = states.get(record.unit());
        let used = hostfs::used_bytes(record.host_path());
        Ok(info(record, status, used))
    }

    /// The cleanup unit's `ExecStop=`: once the channel's tmpfs is unmounted, removes the
    /// directory of a channel, and the parents that were made for it, only while empty (an
    /// unmounted channel's directory is; `rmdir` refuses anything else, mount points included),
    /// then its record. Paths hostchan has no record of are never touched.
    pub fn cleanup(&self, host_path: &Path, id: &str) -> Result<Cleanup> {
        let host_path = spec::normalize_absolute("host path", &host_path.to_string_lossy())?;
        let unit = unit_name::mount_unit_name(&host_path);
        match self.store.load(&unit)? {
            Some(record) if record.channel.id == id => {
                self.wait_for_unmount(&record)?;
                self.remove_leftovers(&record)
            }
            Some(record) => Err(Error::not_found(format!(
                "the record of {} is channel {}, not {id}: it was made after this one went; nothing was removed",
                host_path.display(),
                record.channel.id
            ))),
            None => Err(Error::not_found(format!(
                "no channel at {}: hostchan has no record of it; nothing was removed",
                host_path.display()
            ))),
        }
    }

    /// The cleanup unit is not ordered against its mount (see [`units::channel_units`]): PID 1
    /// runs its stop beside the unmount, and it waits here until the tmpfs is gone from the
    /// host path. While nothing changes it asks systemd whether the mount is being stopped at
    /// all: a cleanup stopped on its own, or a failed unmount, leaves everything as it is.
    fn wait_for_unmount(&self, record: &Record) -> Result<()> {
        let mut changes = hostfs::MountChanges::watch()?;
        while hostfs::is_mount_point(record.host_path())? {
            if changes.wait(UNMOUNT_LOOK_AFTER)? {
                continue;
            }
            let states = self.systemd()?.unit_states(&[record.unit()])?;
            let stopping = states
                .get(record.unit())
                .is_some_and(|s| s.job_type == "stop" || s.active_state == "deactivating");
            if !stopping {
                return Err(Error::runtime(format!(
                    "cannot remove channel directory {}: something is mounted on it and {} is not stopping; left it and its record (stop {} to remove the channel)",
                    record.host_path().display(),
                    record.unit(),
                    record.unit()
                )));
            }
        }
        Ok(())
    }

    /// The work of [`Channels::cleanup`] for a record in hand: the directory and the parents
    /// made for it (only while empty), then the record.
    fn remove_leftovers(&self, record: &Record) -> Result<Cleanup> {
        let host_path = record.host_path();
        let removed_directory = hostfs::remove_made(&record.made)?.removed_directory;
        self.store.remove(record.unit(), &record.channel.id)?;
        tracing::info!(
            OBJECT_SYSTEMD_UNIT = %record.unit(),
            "removed channel directory {} and its record",
            host_path.display()
        );
        Ok(Cleanup {
            host_path: host_path.to_owned(),
            removed_directory,
        })
    }

    /// Removes what crashes and reboots left behind: for every record whose host path is not
    /// mounted and whose units systemd no longer has (no unit loaded, no job), the directories
    /// hostchan made (only while empty) and the record. A path something is mounted on is never
    /// touched. `offline` (early boot, before D-Bus; a reboot has lost every transient unit):
    /// the mount alone decides.
    pub fn gc(&self, dry_run: bool, offline: bool) -> Result<Vec<Leftover>> {
        let exclusive = self.store.lock(true)?;
        if !dry_run {
            for stale in self.store.remove_stale_files(&exclusive)? {
                tracing::info!("removed {stale}, left by a killed hostchan");
            }
        }
        let records = self.store.all()?;
        let live_units = if offline || records.is_empty() {
            HashSet::new()
        } else {
            let names: Vec<&str> = records
                .iter()
                .flat_map(|r| [r.unit(), r.channel.cleanup_unit.as_str()])
                .collect();
            self.systemd()?
                .unit_states(&names)?
                .into_values()
                .filter(|status| status.exists() || status.job_id != 0)
                .map(|status| status.name)
                .collect()
        };
        let now = seconds_since_epoch();
        let mut leftovers = Vec::new();
        for record in records {
            if !offline && is_idle(&record, now) {
                let outcome = if dry_run {
                    LeftoverOutcome::WouldExpire
                } else {
                    match self.delete(&Target::of_unit(record.unit())) {
                        Ok(_) => LeftoverOutcome::Expired,
                        Err(e) => LeftoverOutcome::Kept {
                            reason: e.to_string(),
                        },
                    }
                };
                leftovers.push(Leftover {
                    channel: record.channel,
                    outcome,
                });
                continue;
            }
            if hostfs::is_mount_point(record.host_path())?
                || live_units.contains(record.unit())
                || live_units.contains(&record.channel.cleanup_unit)
            {
                continue;
            }
            let outcome = if dry_run {
                LeftoverOutcome::WouldRemove
            } else {
                match self.remove_leftovers(&record) {
                    Ok(done) => LeftoverOutcome::Removed {
                        directory: done.removed_directory,
                    },
                    Err(e) => {
                        tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "gc kept {}: {e}", record.host_path().display());
                        LeftoverOutcome::Kept {
                            reason: e.to_string(),
                        }
                    }
                }
            };
            leftovers.push(Leftover {
                channel: record.channel,
                outcome,
            });
        }
        Ok(leftovers)
    }

    fn load(&self, target: &Target) -> Result<Record> {
        self.store.load(&target.unit)?.ok_or_else(|| {
            Error::not_found(format!(
                "no channel at {}: hostchan has no record of {}; nothing was changed",
                target.shown, target.unit
            ))
        })
    }
}

/// Threads reading records in `list`: this machine's two cores, and no more file systems
/// calls in flight than a small host handles well.
const LIST_READERS: usize = 2;

/// How long a cleanup waits for the unmount before it asks systemd whether one is coming.
const UNMOUNT_LOOK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn panicked() -> Error {
    Error::runtime("a thread of list panicked")
}

/// Refuses a host path that is, is inside, or holds another channel, and returns the
/// directories other channels' creation made above it: recorded with this channel too, so that
/// whichever channel goes last removes them (each goes only while empty).
fn check_among_channels(host_path: &Path, records: &[Record]) -> Result<Vec<MadeDir>> {
    let mut shared: Vec<MadeDir> = Vec::new();
    for record in records {
        // A racing create for the same path wrote its record since ours was looked for.
        if host_path == record.host_path() {
            return Err(record.already_a_channel());
        }
        if record.host_path().starts_with(host_path) {
            return Err(Error::invalid(
                "host path",
                host_path.display().to_string(),
                format!(
                    "holds the channel {}, which a channel here would cover; choose another path",
                    record.host_path().display()
                ),
            ));
        }
        if host_path.starts_with(record.host_path()) {
            return Err(Error::invalid(
                "host path",
                host_path.display().to_string(),
                format!(
                    "is inside the channel {}; choose a path outside it",
                    record.host_path().display()
                ),
            ));
        }
        for made in &record.made {
            if made.path != record.host_path()
                && host_path.starts_with(&made.path)
                && !shared.iter().any(|s| s.path == made.path)
            {
                shared.push(made.clone());
            }
        }
    }
    Ok(shared)
}

/// `used`: the usage of whatever is mounted at the host path, shown only while the channel is
/// active (otherwise it is the usage of the file system below).
fn info(record: Record, status: Option<&UnitStatus>, used: Option<u64>) -> ChannelInfo {
    let (state, sub_state) = match status {
        Some(s) if s.exists() => (State::of_unit(&s.active_state), s.sub_state.clone()),
        _ => (State::Gone, String::new()),
    };
    let used = used.filter(|_| state == State::Active);
    ChannelInfo {
        channel: record.channel,
        used,
        state,
        sub_state,
        memory_limit: None,
    }
}

/// Attaches the channel in the container of `attach.pid`, and says so in the channel's journal.
fn attach_in_container(spec: &ChannelSpec, attach: &AttachTo) -> Result<inject::Attached> {
    let attached = inject::attach(
        &spec.host_path,
        &AttachPoint {
            pid: attach.pid,
            rootfs: attach.rootfs.as_deref(),
            container_path: &spec.container_path,
            access: spec.access,
        },
    )?;
    tracing::info!(
        OBJECT_SYSTEMD_UNIT = %unit_name::mount_unit_name(&spec.host_path),
        "attached channel {} at {} ({}) in the container of pid {}",
        spec.host_path.display(),
        spec.container_path.display(),
        spec.access,
        attach.pid
    );
    Ok(attached)
}

/// Unmounts the channel's copy in the container it was attached in, if that still runs.
fn detach_copy(record: &Record) -> Result<()> {
    if let Some(attached) = &record.attached {
        if let Some(device) = hostfs::mounted_device(record.host_path())? {
            inject::detach(attached, &record.channel.spec.container_path, device)?;
        }
    }
    Ok(())
}

/// A `delete`-lifetime channel whose container has been neither started nor stopped within the
/// channel's idle limit, and does not run now.
fn is_idle(record: &Record, now: u64) -> bool {
    record.channel.lifetime == Lifetime::Delete
        && record.idle_limit > 0
        && now.saturating_sub(record.last_seen) > record.idle_limit
        && !record
            .attached
            .as_ref()
            .is_some_and(inject::attached_container_runs)
}

/// Starts the unit that holds a container's `delete`-lifetime channels, unless it runs already
/// (another channel of the container, or a create racing this one, started it).
fn ensure_keeper(systemd: &Systemd, keeper: &str, container: &str) -> Result<()> {
    let running = |systemd: &Systemd| -> Result<bool> {
        Ok(systemd
            .unit_states(&[keeper])?
            .get(keeper)
            .is_some_and(|s| s.exists() && s.active_state == "active"))
    };
    if running(systemd)? {
        return Ok(());
    }
    match systemd.start_transient(&units::keeper_unit(keeper, container), &[]) {
        Ok(outcome) if outcome.succeeded() => Ok(()),
        Ok(outcome) => Err(outcome.error("start", None)),
        Err(e) if e.kind() == Kind::AlreadyExists && running(systemd)? => Ok(()),
        Err(e) => Err(e),
    }
}

/// 128 random bits, in hex.
fn new_channel_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("cannot get random bytes for a channel id")?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn seconds_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Serialize)]
pub struct Cleanup {
    pub host_path: PathBuf,
    pub removed_directory: bool,
}

/// A channel `gc` found without its mount.
#[derive(Debug, Serialize)]
pub struct Leftover {
    #[serde(flatten)]
    pub channel: Channel,
    #[serde(flatten)]
    pub outcome: LeftoverOutcome,
}

#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum LeftoverOutcome {
    /// `--dry-run`: the record would go, and the directory if it is empty.
    WouldRemove,
    /// `--dry-run`: an idle `delete`-lifetime channel would be deleted.
    WouldExpire,
    /// A `delete`-lifetime channel whose container was not seen within its idle limit: deleted.
    Expired,
    /// The record is gone; `directory` says whether there was a directory to remove.
    Removed { directory: bool },
    /// Left as it was (the directory is not empty, say); the reason says what to do.
    Kept { reason: String },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::Access;

    pub(crate) fn channel(host_path: &str, owner: Option<&str>) -> Channel {
        let unit = unit_name::mount_unit_name(Path::new(host_path));
        Channel {
            id: "0123456789abcdef0123456789abcdef".into(),
            spec: ChannelSpec {
                host_path: host_path.into(),
                container_path: "/chan".into(),
                access: Access::Rw,
                size: 1 << 20,
            },
            owner: owner.map(str::to_owned),
            container: Some("c0ffee".into()),
            cleanup_unit: unit_name::cleanup_unit_name(&unit),
            unit,
            created: 1_700_000_000,
            lifetime: Lifetime::Stop,
            root_owner: None,
        }
    }

    fn made(paths: &[&str]) -> Vec<MadeDir> {
        paths
            .iter()
            .zip(1..)
            .map(|(path, ino)| MadeDir {
                path: path.into(),
                dev: 1,
                ino,
            })
            .collect()
    }

    fn record(host_path: &str, made_dirs: &[&str]) -> Record {
        Record::new(channel(host_path, None), made(made_dirs))
    }

    #[test]
    fn channels_inside_channels_and_shared_parents() {
        let records = [
            record("/run/a/b/c1", &["/run/a", "/run/a/b", "/run/a/b/c1"]),
            record("/run/x/c2", &["/run/x/c2"]),
        ];
        let paths =
            |dirs: Vec<MadeDir>| -> Vec<PathBuf> { dirs.into_iter().map(|d| d.path).collect() };
        // A sibling under the parents c1's creation made: the last one to go removes them.
        assert_eq!(
            paths(check_among_channels(Path::new("/run/a/b/c3"), &records).unwrap()),
            [PathBuf::from("/run/a"), PathBuf::from("/run/a/b")]
        );
        assert_eq!(
            check_among_channels(Path::new("/run/a/b/c3"), &records).unwrap()[0],
            records[0].made[0],
            "the identity comes along"
        );
        assert_eq!(
            paths(check_among_channels(Path::new("/run/a/q"), &records).unwrap()),
            [PathBuf::from("/run/a")]
        );
        // Next to a channel whose own directory was all it made: nothing shared.
        assert!(check_among_channels(Path::new("/run/x/c4"), &records)
            .unwrap()
            .is_empty());
        assert!(check_among_channels(Path::new("/srv/q"), &records)
            .unwrap()
            .is_empty());
        let inside = check_among_channels(Path::new("/run/x/c2/d"), &records).unwrap_err();
        assert_eq!(inside.kind(), Kind::Invalid);
        assert!(
            inside
                .to_string()
                .contains("is inside the channel /run/x/c2"),
            "{inside}"
        );
        let same = check_among_channels(Path::new("/run/x/c2"), &records).unwrap_err();
        assert_eq!(same.kind(), Kind::AlreadyExists);
        assert!(same.to_string().contains("is already a channel"), "{same}");
    }

    #[test]
    fn states_from_systemd_and_beyond() {
        for word in [
            "active",
            "activating",
            "deactivating",
            "reloading",
            "inactive",
            "failed",
            "maintenance",
        ] {
            assert_eq!(State::of_unit(word).as_str(), word);
        }
        assert_eq!(State::of_unit("active"), State::Active);
        assert_eq!(serde_json::to_value(State::Gone).unwrap(), "gone");
        assert_eq!(State::Deleted.to_string(), "deleted");
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("/run//chan/c1/").unwrap(),
            Target {
                unit: "run-chan-c1.mount".into(),
                shown: "/run/chan/c1".into()
            }
        );
        assert_eq!(
            Target::parse("run-chan-c1.mount").unwrap().unit,
            "run-chan-c1.mount"
        );
        assert!(Target::parse("run-chan-c1.service").is_err());
        assert!(Target::parse("relative/x.mount").is_err());
        assert!(Target::parse("/a/../b").is_err());
    }
}
