//! The cleanup unit's work after an unmount, and `gc` of what crashes and reboots left.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::keeper::is_idle;
use super::leftover::CREATOR_GONE_WITHIN;
use super::{seconds_since_epoch, Channels, Target};
use crate::error::{Error, Result};
use crate::hostfs;
use crate::model::Channel;
use crate::record::Record;
use crate::spec;
use crate::systemd::UnitStatus;
use crate::unit_name;

/// How long the prune started by a stop goes on looking while channels are still stopping.
const PRUNE_FOLLOWS_STOPS_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a cleanup waits for the unmount before it asks systemd whether one is coming.
const UNMOUNT_LOOK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

impl Channels {
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

    /// Removes what crashes and reboots left behind: for every record whose host path is not
    /// mounted and whose units systemd no longer has (no unit loaded, no job), the directories
    /// hostchan made (only while empty) and the record. A path something is mounted on is never
    /// touched. `offline` (early boot, before D-Bus; a reboot has lost every transient unit):
    /// the mount alone decides.
    pub fn gc(&self, how: Gc) -> Result<Vec<Leftover>> {
        if !how.no_wait {
            return self.gc_pass(how).map(|(leftovers, _)| leftovers);
        }
        // The prune a stop starts: many channels stop together (a pod's, a storm's), and the
        // first stop starts it while the others are still unmounting; a start asked for while
        // it runs does nothing. So it looks again while any channel is on its way down, and,
        // with `linger`, each time the mount table changes until it has not for that long: a
        // node's stops then cost PID 1 no fork each (a `delete` paid 3.5 ms for one). It
        // watches the mount table, not systemd's signals: subscribing to those has PID 1 send
        // one for every change of every unit, which cost each delete 1.5 ms.
        let mut changes = match how.linger {
            Some(_) => Some(hostfs::MountChanges::watch()?),
            None => None,
        };
        let mut all = Vec::new();
        // How long the mount table has been still: a minute of it ends the prune, whatever it
        // keeps finding.
        let mut still = std::time::Duration::ZERO;
        if !how.dry_run && !how.offline {
            self.settle_stopped_mounts()?;
        }
        let units_of = |records: &[Record]| -> HashSet<String> {
            records.iter().map(|r| r.unit().to_owned()).collect()
        };
        let mut known = units_of(&self.store.all()?);
        loop {
            let deadline = std::time::Instant::now() + PRUNE_FOLLOWS_STOPS_FOR;
            loop {
                let (leftovers, stopping) = self.gc_pass(how)?;
                all.extend(leftovers);
                if !stopping || std::time::Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let (Some(changes), Some(linger)) = (&mut changes, how.linger) else {
                return Ok(all);
            };
            // Looks only when a recorded channel's path is not mounted (a delete removes its
            // own record a moment after its unmount): one look for a burst of changes.
            // It also looks once a second while a recorded channel is unmounted, so that a
            // change it missed (one during a pass that found a channel still going) cannot
            // leave a record for the next gc.
            loop {
                let step = linger.min(std::time::Duration::from_secs(1));
                if changes.wait(step)? {
                    still = std::time::Duration::ZERO;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    while changes.wait(std::time::Duration::ZERO)? {}
                } else {
                    still += step;
                    if still >= linger {
                        return Ok(all);
                    }
                }
                let records = self.store.all()?;
                // A delete removes its record itself: the unit it stopped is seen to.
                let now = units_of(&records);
                if !how.dry_run && known.iter().any(|unit| !now.contains(unit)) {
                    self.settle_stopped_mounts()?;
                }
                known = now;
                if records
                    .iter()
                    .any(|record| !matches!(hostfs::is_mount_point(record.host_path()), Ok(true)))
                {
                    break;
                }
            }
        }
    }

    /// Has systemd look again at every channel mount it stopped and has yet to unload, until
    /// none is left or stopping (at most [`PRUNE_FOLLOWS_STOPS_FOR`]): systemd 252 may forget
    /// one whose `OnSuccess=` start (this prune's) was queued as it stopped (see
    /// `Systemd::nudge_collection`), and a `delete`, which nudges it once as it returns, does
    /// not wait for the unload.
    fn settle_stopped_mounts(&self) -> Result<()> {
        let systemd = self.systemd()?;
        let deadline = std::time::Instant::now() + PRUNE_FOLLOWS_STOPS_FOR;
        loop {
            let (over, stopping) = systemd.settling_channel_mounts()?;
            for name in &over {
                systemd.nudge_collection(name);
            }
            if (over.is_empty() && !stopping) || std::time::Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// One pass of [`Channels::gc`]; with it, whether a channel's unit was being stopped.
    fn gc_pass(&self, how: Gc) -> Result<(Vec<Leftover>, bool)> {
        let Gc {
            dry_run,
            offline,
            no_wait,
            linger: _,
        } = how;
        // A dry run writes nothing, not even the lock: where no create ever made it, there is
        // nothing to report.
        let exclusive = if no_wait {
            self.store.try_lock_exclusive()?
        } else if dry_run {
            self.store.lock_if_made(true)?
        } else {
            Some(self.store.lock(true)?)
        };
        let Some(exclusive) = exclusive else {
            return Ok((Vec::new(), false));
        };
        if !offline {
            // A creator killed half way may have sent the start of its units just before: it
            // reaches systemd before anything gc asks once the bus has seen the creator go.
            for name in self.store.dead_creators(&exclusive)? {
                self.systemd()?
                    .wait_until_gone(&name, CREATOR_GONE_WITHIN)?;
            }
        }
        if !dry_run {
            for stale in self.store.remove_stale_files(&exclusive)? {
                tracing::info!("removed {stale}, left by a killed hostchan");
            }
        }
        let records = self.store.all()?;
        let mut stopping = false;
        let live_units: HashSet<String> = if offline || records.is_empty() {
            HashSet::new()
        } else {
            let names: Vec<&str> = records.iter().flat_map(|r| r.channel.units()).collect();
            let systemd = self.systemd()?;
            let states = systemd.unit_states(&names)?;
            stopping = states
                .values()
                .any(|s| s.job_type == "stop" || s.active_state == "deactivating");
            for status in states.values().filter(|s| s.is_over()) {
                systemd.nudge_collection(&status.name);
            }
            states
                .into_values()
                // A stopped unit systemd has yet to unload is as gone as one it has: the
                // prune that the mount's stop starts asks at that moment.
                .filter(UnitStatus::is_live)
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
                || record.channel.units().any(|unit| live_units.contains(unit))
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
        Ok((leftovers, stopping))
    }
}

/// How `gc` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gc {
    /// Say what would go, remove nothing.
    pub dry_run: bool,
    /// Without D-Bus: a record is a leftover when its path is not mounted.
    pub offline: bool,
    /// Do nothing while another hostchan holds the record lock (the prune a stop starts).
    pub no_wait: bool,
    /// With `no_wait`: look again each time systemd unloads a unit, until none has for this
    /// long.
    pub linger: Option<std::time::Duration>,
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
