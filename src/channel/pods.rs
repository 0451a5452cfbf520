//! The channels the NRI plugin makes for Kubernetes pods. They are made before their container
//! has a unit, bound to the pod sandbox's; once the container has its own, a binder unit takes
//! them down with it. The runtime's events take them down too, and at every (re)connection the
//! plugin reconciles them with the pods and containers the runtime has.

use std::collections::{HashMap, HashSet};

use super::{ChannelInfo, Channels};
use crate::error::{Error, Result};
use crate::model::Lifetime;
use crate::record::Record;
use crate::unit_name;
use crate::units;

/// What the runtime has, as the plugin's Synchronize sees it.
#[derive(Debug, Default)]
pub struct LivePods {
    /// Sandbox ids of the pods that are there.
    pub pods: HashSet<String>,
    /// Containers created or running (not stopped), each with its own unit once it has one.
    pub containers: HashMap<String, Option<String>>,
    /// The ids of the channels there were when the runtime's view was taken: only these are
    /// judged by it (`None`: all), so that a channel made since is never taken for an orphan.
    pub judged: Option<HashSet<String>>,
}

fn is_container_lifetime(record: &Record) -> bool {
    record.channel.lifetime == Lifetime::Container
}

impl Channels {
    /// The container has its own unit now (StartContainer): its `container`-lifetime channels
    /// go with that unit from here on, whether or not the plugin is there to see it. Returns how
    /// many channels it bound.
    pub fn bind_to_container_unit(&self, container: &str, unit: &str) -> Result<usize> {
        let mut records = self.store.all()?;
        records.retain(|r| {
            is_container_lifetime(r) && r.channel.container.as_deref() == Some(container)
        });
        if records.is_empty() {
            return Ok(0);
        }
        let systemd = self.systemd()?;
        let binder = unit_name::binder_unit_name(container);
        if systemd.is_active(&binder)? {
            return Ok(records.len());
        }
        let mounts: Vec<&str> = records.iter().map(|r| r.unit()).collect();
        let outcome =
            systemd.start_transient(&units::binder_unit(&binder, container, unit, &mounts), &[])?;
        if !outcome.succeeded() {
            return Err(outcome.error("start", None));
        }
        Ok(records.len())
    }

    /// The ids of every channel there is.
    pub fn channel_ids(&self) -> Result<HashSet<String>> {
        Ok(self
            .store
            .all()?
            .into_iter()
            .map(|record| record.channel.id)
            .collect())
    }

    /// The container stopped or was removed (StopContainer, RemoveContainer): its
    /// `container`-lifetime channels go, and its binder with them.
    pub fn pod_container_gone(&self, container: &str) -> Result<Vec<ChannelInfo>> {
        let deleted = self.container_stopped(container);
        let binder = self
            .systemd()
            .and_then(|systemd| systemd.stop(&unit_name::binder_unit_name(container)));
        let deleted = deleted?;
        if let Some(outcome) = binder? {
            if !outcome.succeeded() {
                return Err(outcome.error("stop", None));
            }
        }
        Ok(deleted)
    }

    /// The pod is going (StopPodSandbox, RemovePodSandbox): every channel made for it goes,
    /// both lifetimes. Its unit takes them too; this is for runtimes without one, and for a
    /// plugin that comes back.
    pub fn pod_gone(&self, sandbox: &str) -> Result<Vec<ChannelInfo>> {
        let mut records = self.store.all()?;
        records.retain(|r| r.channel.pod.as_deref() == Some(sandbox));
        let containers: HashSet<String> = records
            .iter()
            .filter(|r| is_container_lifetime(r))
            .filter_map(|r| r.channel.container.clone())
            .collect();
        let deleted = self.delete_records(&format!("pod {sandbox}"), records)?;
        match Error::all_of(self.stop_binders(containers), |n| {
            format!("{n} binders of pod {sandbox}'s containers could not be stopped")
        }) {
            None => Ok(deleted),
            Some(e) => Err(e),
        }
    }

    /// Stops the binders of these containers, going on past failures; returns the failures.
    fn stop_binders(&self, containers: HashSet<String>) -> Vec<Error> {
        containers
            .into_iter()
            .filter_map(|container| {
                self.systemd()
                    .and_then(|s| s.stop(&unit_name::binder_unit_name(&container)))
                    .err()
            })
            .collect()
    }

    /// Synchronize: keeps the channels of the pods and containers the runtime has, binding
    /// those of running containers to their units (the plugin may have missed the start), and
    /// deletes the rest of the channels the plugin made. Goes on past failures and reports
    /// them all; returns what it deleted.
    pub fn reconcile_pods(&self, live: &LivePods) -> Result<Vec<ChannelInfo>> {
        let mut gone = Vec::new();
        let mut to_bind: HashMap<&str, &str> = HashMap::new();
        let records = self.store.all()?;
        for record in &records {
            let Some(pod) = record.channel.pod.as_deref() else {
                continue;
            };
            if live
                .judged
                .as_ref()
                .is_some_and(|ids| !ids.contains(&record.channel.id))
            {
                continue;
            }
            let container = record.channel.container.as_deref();
            let live_container = container.and_then(|c| live.containers.get_key_value(c));
            let keep = live.pods.contains(pod)
                && match record.channel.lifetime {
                    Lifetime::Pod => true,
                    _ => live_container.is_some(),
                };
            if !keep {
                gone.push(record.clone());
            } else if let Some((id, Some(unit))) = live_container {
                to_bind.insert(id, unit);
            }
        }
        let mut failed = Vec::new();
        let containers: HashSet<String> = gone
            .iter()
            .filter(|r| is_container_lifetime(r))
            .filter_map(|r| r.channel.container.clone())
            .collect();
        let deleted = match self.delete_records("pods gone", gone) {
            Ok(deleted) => deleted,
            Err(e) => {
                failed.push(e);
                Vec::new()
            }
        };
        failed.extend(self.stop_binders(containers));
        for (container, unit) in to_bind {
            if let Err(e) = self.bind_to_container_unit(container, unit) {
                failed.push(e.context(format!("container {container}")));
            }
        }
        match Error::all_of(failed, |n| {
            format!("{n} steps of reconciling the pods' channels failed")
        }) {
            None => Ok(deleted),
            Some(e) => Err(e),
        }
    }
}
