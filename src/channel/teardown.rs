//! The one teardown of a channel whose units were (or may have been) started.

use super::create::Pending;
use super::{Channels, Cleanup};
use crate::error::Result;
use crate::hostfs;
use crate::inject;
use crate::memory;
use crate::record::Record;
use crate::systemd::Systemd;

impl Channels {
    /// Undoes creates whose units were (or may have been) started: detaches the copies made
    /// in containers and gives back memory limits raised for them, stops whatever systemd still
    /// has of them (all stops queued before the wait), then removes the directories (only if
    /// empty) and the records.
    pub(super) fn roll_back(&self, systemd: &Systemd, pending: &[Pending]) {
        for one in pending {
            let record = &one.record;
            if let Err(e) = detach_copy(record) {
                tracing::warn!(OBJECT_SYSTEMD_UNIT = %record.unit(), "rolling back: {e}");
            }
            if let Some(change) = &record.memory_limit {
                if let Err(e) = memory::undo_memory_change(systemd, change) {
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

/// Unmounts the channel's copy in the container it was attached in, if that still runs.
pub(super) fn detach_copy(record: &Record) -> Result<()> {
    if let Some(attached) = &record.attached {
        if let Some(device) = hostfs::mounted_device(record.host_path())? {
            inject::detach(attached, &record.channel.spec.container_path, device)?;
        }
    }
    Ok(())
}
