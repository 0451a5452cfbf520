//! `delete`, `delete --container` and the poststop hook.

use super::teardown::{detach_copy, OnError};
use super::{seconds_since_epoch, ChannelInfo, Channels, Target};
use crate::error::{Error, Kind, Result};
use crate::model::Lifetime;
use crate::record::Record;
use crate::unit_name;

impl Channels {
    pub fn delete(&self, target: &Target) -> Result<ChannelInfo> {
        self.delete_one(target, true)
    }

    /// `stop_idle_keeper`: also stop the container's keeper unit if this was the last channel
    /// it kept; `delete --container` stops it itself, before it deletes the channels.
    fn delete_one(&self, target: &Target, stop_idle_keeper: bool) -> Result<ChannelInfo> {
        let record = self.load(target)?;
        let systemd = self.systemd()?;
        self.tear_down(systemd, &[&record], OnError::Stop)?;
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

    /// The container stopped (the poststop hook; the NRI plugin's StopContainer and
    /// RemoveContainer through [`Channels::pod_container_gone`]). Its `stop`-lifetime channels
    /// are deleted (those its scope did not take already); its `delete`-lifetime ones stay, and
    /// are marked seen.
    pub fn container_stopped(&self, container: &str) -> Result<Vec<ChannelInfo>> {
        let mut stopped = Vec::new();
        for mut record in self.records_of(container)? {
            match record.channel.lifetime {
                Lifetime::Delete => {
                    record.last_seen = seconds_since_epoch();
                    self.store.replace(&record)?;
                }
                Lifetime::Stop | Lifetime::Pod | Lifetime::Container => stopped.push(record),
            }
        }
        self.delete_records(&format!("container {container}"), stopped)
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
        self.delete_records(&format!("container {container}"), records)
    }

    fn records_of(&self, container: &str) -> Result<Vec<Record>> {
        let mut records = self.store.all()?;
        records.retain(|r| r.channel.container.as_deref() == Some(container));
        Ok(records)
    }

    /// Deletes these channels of `container`, going on past failures. A channel that went
    /// meanwhile (its owner stopped, or its keeper unit took it) counts as deleted if it was
    /// kept for the container, and is left out if its own owner took it.
    /// `whose`: "container ID" or "pod ID", for the error.
    pub(super) fn delete_records(
        &self,
        whose: &str,
        records: Vec<Record>,
    ) -> Result<Vec<ChannelInfo>> {
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
                "{n} of {} channels of {whose} could not be deleted",
                n + deleted.len()
            )
        }) {
            None => Ok(deleted),
            Some(e) => Err(e),
        }
    }
}
