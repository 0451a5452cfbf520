//! `create`: check, record, make the directories, start every channel's units at once, attach
//! them in their container; all or none.

use std::collections::HashMap;

use serde::Serialize;

use super::keeper::ensure_keeper;
use super::leftover::{being_made, Standing};
use super::neighbours::{check_among_channels, check_node_budget};
use super::request::{AttachTo, CreateOptions};
use super::teardown::OnError;
use super::{seconds_since_epoch, ChannelInfo, Channels};
use crate::config::Config;
use crate::error::{Context, Error, Kind, Result};
use crate::fail_point;
use crate::hostfs;
use crate::inject::{self, AttachPoint};
use crate::memory;
use crate::model::{AskedBy, Attached, Channel, Lifetime, Owner};
use crate::owner;
use crate::record::{CreatorLock, Record, StoreLock};
use crate::spec::ChannelSpec;
use crate::systemd::{Memory, SystemdOps};
use crate::unit_name;
use crate::units::{self, ChannelUnits, TransientUnit, UnitInputs};

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

impl Created {
    /// The channel made or found, for a create that was not a dry run.
    pub fn into_channel(self) -> Option<ChannelInfo> {
        match self {
            Created::Channel(info) | Created::Existing(info) => Some(*info),
            Created::DryRun(_) => None,
        }
    }
}

/// A create that failed: which of the requests, and why.
#[derive(Debug)]
pub struct CreateFailed {
    pub index: usize,
    pub error: Error,
}

/// A channel whose record and directories exist and whose units are not started yet.
pub(super) struct Pending<'a> {
    /// Which of the requests it is.
    index: usize,
    options: &'a CreateOptions,
    spec: ChannelSpec,
    units: ChannelUnits,
    /// Names the directories this create made and the parents other channels made above it.
    pub(super) record: Record,
    /// The owner's memory figures, read with its state before the start.
    owner_memory: Option<Memory>,
    /// Held until the channel is up, so that a concurrent `gc` does not take it for a leftover.
    _creating: StoreLock,
    /// Held until the channel is up or taken back, so that a later create knows whether this
    /// one died half way.
    _creator: CreatorLock,
}

enum Prepared<'a> {
    Done(Created),
    Pending(Box<Pending<'a>>),
}

impl Channels {
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
    pub fn create_all<R: AsRef<CreateOptions>>(
        &self,
        config: &Config,
        requests: &[R],
    ) -> std::result::Result<Vec<Created>, CreateFailed> {
        self.create_all_then(config, requests, &|| {})
    }

    /// [`Channels::create_all`], calling `queued` once every unit to start has its start job
    /// queued in PID 1, before waiting for the jobs (which wait out PID 1's mount rate limit).
    pub fn create_all_then<R: AsRef<CreateOptions>>(
        &self,
        config: &Config,
        requests: &[R],
        queued: &dyn Fn(),
    ) -> std::result::Result<Vec<Created>, CreateFailed> {
        let mut done: Vec<(usize, Created)> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut active_owners = HashMap::new();
        for (index, options) in requests.iter().map(AsRef::as_ref).enumerate() {
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
            done.extend(self.start_all(pending, queued)?);
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
        active_owners: &mut HashMap<String, Memory>,
    ) -> Result<Prepared<'a>> {
        let spec = options.spec.clone();
        config.check_host_path(&spec.host_path, &options.given.asked_by)?;
        if config.channels.check_available_memory {
            config.check_available_memory(spec.size)?;
        }
        if options.owner == Owner::Unbound && !config.owner.allow_unbound {
            return Err(Error::usage(match options.given.asked_by {
                AskedBy::Cli => format!(
                    "unbound channels are turned off in {} (owner.allow_unbound = false); bind the channel to its container with --scope or --pid",
                    config.origin()
                ),
                AskedBy::Annotations(_) => format!(
                    "the container has no systemd unit to bind its channels to, and unbound channels are turned off in {} (owner.allow_unbound = false); run it with the systemd cgroup driver",
                    config.origin()
                ),
            }));
        }
        let id = new_channel_id()?;
        let inputs = UnitInputs {
            spec: &spec,
            owner: &options.owner,
            container: options.container.as_deref(),
            tmpfs: &config.tmpfs,
            hostchan_binary: &self.hostchan_binary,
            id: &id,
            root_owner: options.given.root_owner,
        };
        let units = units::channel_units(&inputs);
        if let Some(record) = self.store.load(&units.mount.name)? {
            match self.standing(&record)? {
                Standing::Live if options.given.dry_run || record.host_path() != spec.host_path => {
                    return Err(record.refuses(&spec.host_path));
                }
                Standing::Live => return self.reuse(record, &spec, options).map(Prepared::Done),
                Standing::BeingMade => return Err(being_made(&record)),
                // A dry run only says what a create would make.
                Standing::Left(_) if options.given.dry_run => {}
                Standing::Left(left) => self.clear_away(&record, left)?,
            }
        }
        if options.given.dry_run {
            // A real create makes these checks once, in its critical section below.
            hostfs::check_free(&spec.host_path)?;
            check_among_channels(&spec.host_path, &units.mount.name, &self.store.all()?)?;
            return Ok(Prepared::Done(Created::DryRun(units)));
        }

        if let Some(attach) = &options.given.attach {
            check_attach_target(attach, &spec)?;
        }
        let systemd = self.systemd()?;
        // A delete-lifetime owner is the unit hostchan keeps, started below once the record
        // stands, so that a refused create never leaves one behind.
        let keeper = match (options.lifetime, &options.owner, &options.container) {
            (Lifetime::Delete, Owner::Unit(keeper), Some(container)) => Some((keeper, container)),
            _ => None,
        };
        let owner_memory = match (keeper, &options.owner) {
            (None, Owner::Unit(owner)) => Some(match active_owners.get(owner) {
                Some(memory) => *memory,
                None => {
                    let memory = owner::check_owner_active(systemd, owner)?;
                    active_owners.insert(owner.clone(), memory);
                    memory
                }
            }),
            _ => None,
        };
        let creating = self.store.lock(false)?;
        let creator = self.store.creator_lock(&id, &systemd.bus_name())?;
        // The record first, naming the directories about to be made, so that a crash at any
        // later point leaves nothing gc cannot find; the checks against other channels and the
        // write are one step.
        let channel = Channel {
            id: id.clone(),
            spec: spec.clone(),
            owner: options.owner.unit().map(str::to_owned),
            container: options.container.clone(),
            pod: options.pod.clone(),
            unit: units.mount.name.clone(),
            cleanup_unit: units.cleanup.as_ref().map(|unit| unit.name.clone()),
            created: seconds_since_epoch(),
            lifetime: options.lifetime,
            root_owner: options.given.root_owner,
        };
        let mut shared = Vec::new();
        let mut record = self.store.create_checked(|records| {
            check_node_budget(config, &spec, records)?;
            shared = hostfs::still_made(check_among_channels(
                &spec.host_path,
                &units.mount.name,
                records,
            )?);
            let planned = hostfs::plan_host_path(&spec.host_path)?;
            let mut record = Record::new(channel, [shared.clone(), planned].concat());
            record.idle_limit = config.channels.idle_limit;
            if options.lifetime == Lifetime::Pod {
                record
                    .pod_containers
                    .extend(options.given.pod_container.clone());
            }
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
        let made = match hostfs::make_host_path(&spec.host_path, &record.made) {
            Ok(made) => made,
            Err(e) => {
                let _ = self.store.remove(record.unit(), &id);
                return Err(e);
            }
        };
        record.made = [shared, made].concat();
        if let Err(e) = self.store.replace(&record) {
            let _ = hostfs::remove_made(&record.made);
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
            owner_memory,
            _creating: creating,
            _creator: creator,
        })))
    }

    /// Starts the units of all these channels with every job queued before the first wait,
    /// then completes each. Takes all of them down again on the first failure.
    fn start_all(
        &self,
        mut pending: Vec<Pending>,
        queued_all: &dyn Fn(),
    ) -> std::result::Result<Vec<(usize, Created)>, CreateFailed> {
        let failed = |index: usize, error: Error| CreateFailed { index, error };
        let systemd = match self.systemd() {
            Ok(systemd) => systemd,
            Err(e) => {
                self.abandon(&pending);
                return Err(failed(pending[0].index, e));
            }
        };
        let cleanups: Vec<Vec<&TransientUnit>> = pending
            .iter()
            .map(|one| one.units.cleanup.iter().collect())
            .collect();
        let starts: Vec<(&TransientUnit, &[&TransientUnit])> = pending
            .iter()
            .zip(&cleanups)
            .map(|(one, cleanup)| (&one.units.mount, &cleanup[..]))
            .collect();
        let queued = match fail_point::check("create-start")
            .and_then(|()| systemd.queue_start_transient_all(&starts))
        {
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
        if refused.is_none() {
            queued_all();
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
            return Err(failed(index, self.roll_back(systemd, &others, error)));
        }
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let index = pending[0].index;
                return Err(failed(index, self.roll_back(systemd, &pending, e)));
            }
        };
        if let Some((one, outcome)) = pending
            .iter()
            .zip(&outcomes)
            .find(|(_, outcome)| !outcome.succeeded())
        {
            let error = outcome.error("start", one.options.owner.unit());
            let index = one.index;
            return Err(failed(index, self.roll_back(systemd, &pending, error)));
        }
        // Channels of one container share its owner: its memory is read once for all of them
        // (a raise with --grow-memory-limit reads it again, right before).
        let mut owner_memory: HashMap<String, Option<Memory>> = HashMap::new();
        let several = pending.len() > 1;
        // Outer container paths first: a channel at /data/sub is attached inside the one at
        // /data, not hidden under it.
        let mut order: Vec<usize> = (0..pending.len()).collect();
        order.sort_by_key(|&at| pending[at].spec.container_path.components().count());
        for at in order {
            let one = &mut pending[at];
            let memory = match &one.options.owner {
                _ if one.owner_memory.is_some() => one.owner_memory,
                Owner::Unit(owner) if several => *owner_memory
                    .entry(owner.clone())
                    .or_insert_with(|| systemd.memory(owner).ok()),
                _ => None,
            };
            if let Err(e) = self.complete(systemd, &one.spec, one.options, &mut one.record, memory)
            {
                let index = one.index;
                return Err(failed(index, self.roll_back(systemd, &pending, e)));
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
        // The same container's, or (a pod-lifetime channel) the same pod's.
        let same = (options.container.is_some() || options.pod.is_some())
            && record.channel.container == options.container
            && record.channel.pod == options.pod
            && &record.channel.spec == spec
            && record.channel.lifetime == options.lifetime
            && hostfs::is_mount_point(record.host_path())?;
        if !same {
            return Err(record.already_a_channel());
        }
        let restarted = match (options.lifetime, &options.given.attach) {
            // Attached in an earlier run of the container, not in this one.
            (Lifetime::Delete, Some(attach)) => record
                .attached
                .as_ref()
                .is_some_and(|a| !inject::is_attached_in(a, attach.pid)),
            (Lifetime::Pod, _) => options
                .given
                .pod_container
                .as_ref()
                .is_some_and(|name| record.pod_containers.contains(name)),
            _ => false,
        };
        if restarted && options.given.clear_on_restart {
            let removed = hostfs::empty_mount(record.host_path())?;
            tracing::info!(
                OBJECT_SYSTEMD_UNIT = %record.unit(),
                "emptied {} for the container's restart ({removed} entries removed)",
                record.host_path().display()
            );
        }
        if record.channel.lifetime == Lifetime::Pod {
            if let Some(name) = &options.given.pod_container {
                if !record.pod_containers.contains(name) {
                    record.pod_containers.push(name.clone());
                }
            }
        }
        if let Some(attach) = &options.given.attach {
            let here = record
                .attached
                .as_ref()
                .is_some_and(|a| inject::is_attached_in(a, attach.pid));
            if !here {
                check_attach_target(attach, spec)?;
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
        systemd: &dyn SystemdOps,
        spec: &ChannelSpec,
        options: &CreateOptions,
        record: &mut Record,
        owner_memory: Option<Memory>,
    ) -> Result<()> {
        if let Some(attach) = &options.given.attach {
            fail_point::hit("before-attach");
            fail_point::check("before-attach")?;
            record.attached = Some(attach_in_container(spec, attach)?);
            self.store.replace(record)?;
        }
        if let Owner::Unit(owner) = &options.owner {
            fail_point::check("create-memory")?;
            record.memory_limit = memory::memory_headroom(
                systemd,
                owner,
                spec.size,
                options.given.grow_memory_limit,
                owner_memory,
            )?;
            if record.memory_limit.is_some() {
                self.store.replace(record)?;
            }
        }
        fail_point::check("create-done")
    }

    /// Undoes creates whose units were (or may have been) started, with the one teardown,
    /// going on past every failure; returns the error to report: the create's own, and what
    /// could not be taken back.
    fn roll_back(&self, systemd: &dyn SystemdOps, pending: &[Pending], error: Error) -> Error {
        let records: Vec<&Record> = pending.iter().map(|one| &one.record).collect();
        match self.tear_down(systemd, &records, OnError::GoOn) {
            Ok(()) => error,
            Err(left) => error.with_aftermath(format!(
                "and taking it back failed: {left}; run hostchan gc once the cause is mended"
            )),
        }
    }

    /// Undoes creates whose units were never started: their directories and records.
    fn abandon(&self, pending: &[Pending]) {
        for one in pending {
            // The record's list, not only what this create made: the parents it shares with
            // other channels are its to remove too if it is the last (each only while empty),
            // or a parent would outlive every record that names it.
            if let Err(e) = hostfs::remove_made(&one.record.made) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %one.record.unit(), "rolling back: {e}");
            }
            if let Err(e) = self.store.remove(one.record.unit(), &one.record.channel.id) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %one.record.unit(), "rolling back: {e}");
            }
        }
    }
}

/// Whether the channel may be attached in the container of `attach.pid`: a process that exists,
/// is a container's, in a mount namespace of its own, where `ro` would hold.
fn check_attach_target(attach: &AttachTo, spec: &ChannelSpec) -> Result<()> {
    let ns = format!("/proc/{}/ns/mnt", attach.pid);
    if std::fs::symlink_metadata(&ns).is_err() {
        return Err(Error::owner(format!(
            "pid {} does not exist (no {ns}); give the pid of the container's init",
            attach.pid
        )));
    }
    owner::check_container_process(attach.pid)?;
    inject::check_other_mount_namespace(attach.pid)?;
    inject::check_read_only_holds(attach.pid, spec)
}

/// Attaches the channel in the container of `attach.pid`, and says so in the channel's journal.
fn attach_in_container(spec: &ChannelSpec, attach: &AttachTo) -> Result<Attached> {
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::hostfs::MadeDir;
    use crate::model::tests::channel;

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

    fn check(path: &Path, records: &[Record]) -> Result<Vec<MadeDir>> {
        check_among_channels(path, &unit_name::mount_unit_name(path), records)
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
            paths(check(Path::new("/run/a/b/c3"), &records).unwrap()),
            [PathBuf::from("/run/a"), PathBuf::from("/run/a/b")]
        );
        assert_eq!(
            check(Path::new("/run/a/b/c3"), &records).unwrap()[0],
            records[0].made[0],
            "the identity comes along"
        );
        assert_eq!(
            paths(check(Path::new("/run/a/q"), &records).unwrap()),
            [PathBuf::from("/run/a")]
        );
        // Next to a channel whose own directory was all it made: nothing shared.
        assert!(check(Path::new("/run/x/c4"), &records).unwrap().is_empty());
        assert!(check(Path::new("/srv/q"), &records).unwrap().is_empty());
        let inside = check(Path::new("/run/x/c2/d"), &records).unwrap_err();
        assert_eq!(inside.kind(), Kind::Invalid);
        assert!(
            inside
                .to_string()
                .contains("is inside the channel /run/x/c2"),
            "{inside}"
        );
        let same = check(Path::new("/run/x/c2"), &records).unwrap_err();
        assert_eq!(same.kind(), Kind::AlreadyExists);
        assert!(same.to_string().contains("is already a channel"), "{same}");
    }
}
