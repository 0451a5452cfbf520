//! What the lifecycle asks of systemd, as a trait: the seam between the channels' logic and
//! the D-Bus client, so that rollback, reconciliation and the keeper and binder units can be
//! tested against a double (`channel::tests`), in the spirit of youki's `Syscall`.

use std::collections::HashMap;
use std::time::Duration;

use super::{Job, JobOutcome, Memory, OwnerFacts, Systemd, UnitStatus};
use crate::error::Result;
use crate::units::TransientUnit;

pub trait SystemdOps {
    /// The connection's unique name on the bus (a creator lock names its creator by it).
    fn bus_name(&self) -> String;
    fn unit_states(&self, names: &[&str]) -> Result<HashMap<String, UnitStatus>>;
    /// See [`Systemd::settling_channel_mounts`].
    fn settling_channel_mounts(&self) -> Result<(Vec<String>, bool)>;
    fn is_active(&self, unit: &str) -> Result<bool>;
    fn mount_where(&self, unit: &str) -> Result<Option<String>>;
    fn memory(&self, unit: &str) -> Result<Memory>;
    fn owner_facts(&self, unit: &str) -> Result<OwnerFacts>;
    fn set_memory_limit(&self, unit: &str, property: &'static str, bytes: u64) -> Result<()>;
    fn start_transient(&self, main: &TransientUnit, aux: &[&TransientUnit]) -> Result<JobOutcome>;
    fn queue_start_transient_all(
        &self,
        units: &[(&TransientUnit, &[&TransientUnit])],
    ) -> Result<Vec<Result<Job>>>;
    fn stop(&self, name: &str) -> Result<Option<JobOutcome>>;
    fn queue_stop(&self, name: &str) -> Result<Option<Job>>;
    fn wait(&self, jobs: &[Job]) -> Result<Vec<JobOutcome>>;
    fn wait_until_gone(&self, name: &str, limit: Duration) -> Result<bool>;
    /// See [`Systemd::nudge_collection`].
    fn nudge_collection(&self, name: &str);
}

impl SystemdOps for Systemd {
    fn bus_name(&self) -> String {
        Systemd::bus_name(self)
    }
    fn unit_states(&self, names: &[&str]) -> Result<HashMap<String, UnitStatus>> {
        Systemd::unit_states(self, names)
    }
    fn settling_channel_mounts(&self) -> Result<(Vec<String>, bool)> {
        Systemd::settling_channel_mounts(self)
    }
    fn is_active(&self, unit: &str) -> Result<bool> {
        Systemd::is_active(self, unit)
    }
    fn mount_where(&self, unit: &str) -> Result<Option<String>> {
        Systemd::mount_where(self, unit)
    }
    fn memory(&self, unit: &str) -> Result<Memory> {
        Systemd::memory(self, unit)
    }
    fn owner_facts(&self, unit: &str) -> Result<OwnerFacts> {
        Systemd::owner_facts(self, unit)
    }
    fn set_memory_limit(&self, unit: &str, property: &'static str, bytes: u64) -> Result<()> {
        Systemd::set_memory_limit(self, unit, property, bytes)
    }
    fn start_transient(&self, main: &TransientUnit, aux: &[&TransientUnit]) -> Result<JobOutcome> {
        Systemd::start_transient(self, main, aux)
    }
    fn queue_start_transient_all(
        &self,
        units: &[(&TransientUnit, &[&TransientUnit])],
    ) -> Result<Vec<Result<Job>>> {
        Systemd::queue_start_transient_all(self, units)
    }
    fn stop(&self, name: &str) -> Result<Option<JobOutcome>> {
        Systemd::stop(self, name)
    }
    fn queue_stop(&self, name: &str) -> Result<Option<Job>> {
        Systemd::queue_stop(self, name)
    }
    fn wait(&self, jobs: &[Job]) -> Result<Vec<JobOutcome>> {
        Systemd::wait(self, jobs)
    }
    fn wait_until_gone(&self, name: &str, limit: Duration) -> Result<bool> {
        Systemd::wait_until_gone(self, name, limit)
    }
    fn nudge_collection(&self, name: &str) {
        Systemd::nudge_collection(self, name)
    }
}
