//! The one teardown of channels whose units were (or may have been) started: used by the
//! rollback of a failed create, by `delete` (and so by `delete --container`, the poststop hook
//! and gc's expiry of idle channels). gc's removal of leftovers whose units are gone already is
//! its last step alone, [`Channels::remove_leftovers`].

use std::path::Path;

use super::{Channels, Cleanup};
use crate::error::{Error, Result};
use crate::fail_point;
use crate::hostfs;
use crate::inject::{self, Detached};
use crate::memory;
use crate::record::Record;
use crate::systemd::{Job, SystemdOps};
use crate::unit_name;

/// What a teardown does when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnError {
    /// Stop at a failure up to the unmount and say why (`delete`): the channel is still whole,
    /// and a second `delete` (or the owner's stop) finishes it. Past the unmount it goes on like
    /// [`OnError::GoOn`]: the record may be gone by then, and a second `delete` could not find
    /// what is left to do.
    Stop,
    /// Log it and go on with every other step and channel, then report them all (the rollback
    /// of a failed create, which must take back as much as it can).
    GoOn,
}

/// The errors of one teardown, kept or returned as the policy says.
struct Errors {
    on_error: OnError,
    seen: Vec<Error>,
}

impl Errors {
    /// `Err` when the policy is to stop; otherwise the error is logged and kept.
    fn note(&mut self, record: &Record, error: Error) -> Result<()> {
        match self.on_error {
            OnError::Stop => Err(error),
            OnError::GoOn => {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "taking down {}: {error}", record.host_path().display());
                self.seen.push(error);
                Ok(())
            }
        }
    }
}

impl Channels {
    /// Takes these channels down, each step for all of them before the next:
    ///
    /// 1. the copies attached in containers, while the host mount still says which tmpfs is
    ///    the channel's;
    /// 2. the mount units and their cleanup units, every stop queued before one wait (the
    ///    cleanup unit's stop runs beside the unmount and removes the directory and record);
    /// 3. what the cleanup unit did not remove (it may be gone: a crash, a reboot), only while
    ///    the record is still this channel's (the same id: a create may have made a new
    ///    channel at the path meanwhile);
    /// 4. a memory limit raised for the channel, given back only once the mount's stop
    ///    succeeded: the container's writes into the tmpfs are charged to it until the tmpfs is
    ///    unmounted, so a limit lowered before could OOM-kill the container.
    pub(super) fn tear_down(
        &self,
        systemd: &dyn SystemdOps,
        records: &[&Record],
        on_error: OnError,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut errors = Errors {
            on_error,
            seen: Vec::new(),
        };
        for record in records {
            if let Err(e) = fail_point::check("teardown-detach").and_then(|()| detach_copy(record))
            {
                errors.note(record, e)?;
            }
        }
        // Per record: the stop jobs queued, and whether every stop could be asked for.
        let mut jobs: Vec<Job> = Vec::new();
        let mut queued: Vec<(usize, usize, bool)> = Vec::new();
        for record in records {
            let first = jobs.len();
            let mut asked = true;
            // A shortened unit name can be another path's: stop it only if it is this one's.
            if unit_name::is_shortened(record.host_path()) {
                match systemd.mount_where(record.unit()) {
                    Ok(Some(other)) if Path::new(&other) != record.host_path() => {
                        errors.note(
                            record,
                            Error::runtime(format!(
                                "{} is now the mount of {other}, not of {}; left it as it is",
                                record.unit(),
                                record.host_path().display()
                            )),
                        )?;
                        queued.push((first, first, false));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.note(record, e)?;
                        queued.push((first, first, false));
                        continue;
                    }
                }
            }
            for unit in record.channel.units() {
                match fail_point::check("teardown-stop").and_then(|()| systemd.queue_stop(unit)) {
                    Ok(job) => jobs.extend(job),
                    Err(e) => {
                        asked = false;
                        errors.note(record, e.context(format!("cannot stop {unit}")))?;
                    }
                }
            }
            queued.push((first, jobs.len(), asked));
        }
        let outcomes = match systemd.wait(&jobs) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Which record is the first is beside the point: the wait was for all.
                errors.note(records[0], e)?;
                Vec::new()
            }
        };
        fail_point::hit("delete-after-stop");
        let mut unmounted = Vec::with_capacity(records.len());
        for (record, (first, end, asked)) in records.iter().zip(&queued) {
            let mut stopped = *asked && outcomes.len() == jobs.len();
            for outcome in outcomes.get(*first..*end).unwrap_or_default() {
                if outcome.unit == record.unit() && !outcome.succeeded() {
                    stopped = false;
                    errors.note(record, outcome.error("stop", None))?;
                }
            }
            unmounted.push(stopped);
        }
        // PID 1 unloads a stopped unit in a pass after announcing its stop job's end, but
        // systemd 252 may forget to when the mount's OnSuccess= unit was queued at that moment:
        // a nudge has it look again. Not waited for, as systemd-umount does not wait: a create
        // of the same path meanwhile waits for the old unit to go (`again_once_collected`).
        for (record, stopped) in records.iter().zip(&unmounted) {
            if *stopped {
                systemd.nudge_collection(record.unit());
            }
        }
        errors.on_error = OnError::GoOn;
        for (record, unmounted) in records.iter().zip(&unmounted) {
            if !unmounted {
                // Its stop may still come (a call systemd did not answer in time is still
                // queued there): removing the directory now would leave systemd to make it
                // again for a mount nobody has a record of. The record stays for gc.
                errors.note(
                    record,
                    Error::runtime(format!(
                        "left {} and its record for hostchan gc: its units' stop was not confirmed",
                        record.host_path().display()
                    )),
                )?;
                continue;
            }
            let left =
                fail_point::check("teardown-remove").and_then(|()| self.store.load(record.unit()));
            let removed = match left {
                Ok(Some(left)) if left.channel.id == record.channel.id => {
                    self.remove_leftovers(&left).map(drop)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                errors.note(record, e)?;
            }
        }
        for (record, unmounted) in records.iter().zip(unmounted) {
            let Some(change) = &record.memory_limit else {
                continue;
            };
            if !unmounted {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "kept the raised {} of {}: the channel's tmpfs may still be mounted", change.property, change.unit);
                continue;
            }
            let undone = fail_point::check("teardown-memory")
                .and_then(|()| memory::undo_memory_change(systemd, change));
            if let Err(e) = undone {
                errors.note(record, e)?;
            }
        }
        match Error::all_of(errors.seen, |n| {
            format!("{n} steps of taking down {} channels failed", records.len())
        }) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The work of [`Channels::cleanup`] for a record in hand: the directory and the parents
    /// made for it (only while empty), then the record.
    pub(super) fn remove_leftovers(&self, record: &Record) -> Result<Cleanup> {
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
}

/// Unmounts the channel's copy in the container it was attached in, if that still runs, and
/// says in the channel's journal where it was when it was not where it had been attached.
pub(super) fn detach_copy(record: &Record) -> Result<()> {
    let Some(attached) = &record.attached else {
        return Ok(());
    };
    let Some(device) = hostfs::mounted_device(record.host_path())? else {
        return Ok(());
    };
    let container_path = &record.channel.spec.container_path;
    match inject::detach(attached, container_path, device)? {
        Detached::ContainerGone | Detached::AtContainerPath => {}
        Detached::NotMounted => tracing::warn!(
            OBJECT_SYSTEMD_UNIT = %record.unit(),
            "the channel's copy at {} in the container of pid {} had been unmounted already",
            container_path.display(),
            attached.pid
        ),
        Detached::Moved(now) => tracing::warn!(
            OBJECT_SYSTEMD_UNIT = %record.unit(),
            "the channel's copy in the container of pid {} had been moved from {} to {}; detached it there",
            attached.pid,
            container_path.display(),
            now.display()
        ),
    }
    Ok(())
}
