//! The D-Bus client for systemd's manager: start transient units and wait for their jobs, stop
//! units, and read unit states. One connection per process, on the system bus.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use zbus::zvariant::{OwnedObjectPath, Type, Value};

mod errors;
mod jobs;
mod ops;

pub use errors::dbus_errors;
use errors::METHOD_TIMEOUT;
pub use jobs::{Job, JobOutcome};
use jobs::{JobKind, JobWatch};
pub use ops::SystemdOps;

use crate::error::{Error, Kind, Result};
use crate::units::{PropertyValue, TransientUnit};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
trait Manager {
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;
}

/// What hostchan keeps of a row of `ListUnitsByNames`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub job_id: u32,
    pub job_type: String,
}

/// One row of `ListUnitsByNames`, `(ssssssouso)`, borrowed from the reply: `list` asks for
/// every channel at once, and copying the fields it does not show cost it a copy and an
/// allocation each.
#[derive(Deserialize, Type)]
struct UnitRow<'a> {
    name: &'a str,
    description: &'a str,
    load_state: &'a str,
    active_state: &'a str,
    sub_state: &'a str,
    _followed: &'a str,
    _path: zbus::zvariant::ObjectPath<'a>,
    job_id: u32,
    job_type: &'a str,
    _job_path: zbus::zvariant::ObjectPath<'a>,
}

impl UnitStatus {
    /// Loaded in any form (a unit that is not loaded does not exist for systemd).
    pub fn exists(&self) -> bool {
        self.load_state != "not-found" && self.load_state != "stub"
    }

    /// Loaded and active: a unit that runs.
    pub fn is_active(&self) -> bool {
        self.exists() && self.active_state == "active"
    }

    /// What keeps a channel alive: a unit that is loaded and not [over](Self::is_over), or one
    /// with a job queued.
    pub fn is_live(&self) -> bool {
        (self.exists() && !self.is_over()) || self.job_id != 0
    }

    /// Stopped (or failed) with no job to start it again: what systemd has yet to collect.
    /// A stopped transient unit stays loaded until PID 1's next pass over what it can unload;
    /// a stop job's end is announced before that.
    pub fn is_over(&self) -> bool {
        self.exists()
            && self.job_id == 0
            && (self.active_state == "inactive" || self.active_state == "failed")
    }
}

/// What is asked of a channel's owner before the channel is bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    /// Its state; `job_type` is left empty (only `job_id` comes with the properties).
    pub status: UnitStatus,
    /// Its cgroup path (`/machine.slice/libpod-x.scope`); empty while it has none.
    pub control_group: String,
    pub memory: Memory,
}

/// Memory figures of a unit's cgroup, in bytes; `u64::MAX` means none or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemoryMax=` (cgroup v2 semantics; systemd also applies it on v1).
    pub max: u64,
    /// `MemoryLimit=`, the cgroup v1 setting some runtimes still use.
    pub limit: u64,
    pub current: u64,
}

pub struct Systemd {
    manager: ManagerProxy<'static>,
    /// Made before the first job is queued, and kept: the thread that reads the connection's
    /// messages, and the jobs in flight.
    jobs: RefCell<Option<JobWatch>>,
}

impl Drop for Systemd {
    /// The thread that reads the connection's messages holds the connection too, and hears
    /// nothing more once this process stops asking: closed here, it ends, and the connection
    /// with it. Left open, the NRI plugin, which connects once per request, reached the bus's
    /// limit of connections for root after a few hundred.
    fn drop(&mut self) {
        if self.jobs.get_mut().is_some() {
            let _ = self.manager.inner().connection().clone().close();
        }
    }
}
impl Systemd {
    // Not systemd's private socket (/run/systemd/private), which systemctl uses as root:
    // systemd marks what it sends there with the sender org.freedesktop.systemd1, a well-known
    // name, and zbus 5.19 panics on a sender that is not a unique name.
    pub fn connect() -> Result<Systemd> {
        // sd-bus's default: a call systemd never answers fails instead of hanging the engine.
        let connection = zbus::blocking::connection::Builder::system()
            .map(|builder| {
                builder.method_timeout(crate::fail_point::method_timeout(METHOD_TIMEOUT))
            })
            .and_then(|builder| builder.build())
            .map_err(|e| {
                Error::systemd(format!(
                    "cannot connect to the system bus: {e}; is systemd running with D-Bus?"
                ))
            })?;
        let manager = ManagerProxy::new(&connection)?;
        Ok(Systemd {
            manager,
            jobs: RefCell::new(None),
        })
    }

    /// States of the named units in one call; units systemd does not know come back with the
    /// load state `not-found`.
    pub fn unit_states(&self, names: &[&str]) -> Result<HashMap<String, UnitStatus>> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let reply = waited(|| {
            self.manager
                .inner()
                .call_method("ListUnitsByNames", &(names,))
        })?;
        let body = reply.body();
        let rows: Vec<UnitRow<'_>> = body.deserialize()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let status = UnitStatus {
                    name: row.name.to_owned(),
                    load_state: row.load_state.to_owned(),
                    active_state: row.active_state.to_owned(),
                    sub_state: row.sub_state.to_owned(),
                    job_id: row.job_id,
                    job_type: row.job_type.to_owned(),
                };
                (row.name.to_owned(), status)
            })
            .collect())
    }

    /// An owner's state, cgroup and memory in one round trip: every property of the unit at its
    /// object path (`GetAll` with the empty interface name, which systemd answers with all its
    /// interfaces'), where a state, a `GetUnit` and the type's properties took three. A unit
    /// systemd has not loaded comes back `not-found`.
    pub fn owner_facts(&self, unit: &str) -> Result<OwnerFacts> {
        let path = OwnedObjectPath::try_from(unit_object_path(unit))
            .map_err(|e| Error::systemd(format!("no object path for {unit}: {e}")))?;
        let reply = waited(|| {
            self.manager.inner().connection().call_method(
                Some("org.freedesktop.systemd1"),
                &path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &("",),
            )
        })?;
        let body = reply.body();
        let all: HashMap<String, zbus::zvariant::OwnedValue> = body.deserialize()?;
        let text = |name: &str| -> String {
            all.get(name)
                .and_then(|v| String::try_from(v.clone()).ok())
                .unwrap_or_default()
        };
        let number = |name: &str| -> u64 {
            all.get(name)
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(u64::MAX)
        };
        let job_id = all
            .get("Job")
            .and_then(|v| <(u32, OwnedObjectPath)>::try_from(v.clone()).ok())
            .map_or(0, |(id, _)| id);
        Ok(OwnerFacts {
            status: UnitStatus {
                name: unit.to_owned(),
                load_state: text("LoadState"),
                active_state: text("ActiveState"),
                sub_state: text("SubState"),
                job_id,
                job_type: String::new(),
            },
            control_group: text("ControlGroup"),
            memory: Memory {
                max: number("MemoryMax"),
                limit: number("MemoryLimit"),
                current: number("MemoryCurrent"),
            },
        })
    }

    /// hostchan's channel mounts on their way out, found by the description hostchan gives
    /// them (one `ListUnitsFiltered`): the ones stopped that systemd has yet to unload, and
    /// whether any is still stopping.
    pub fn settling_channel_mounts(&self) -> Result<(Vec<String>, bool)> {
        let reply = waited(|| {
            self.manager.inner().call_method(
                "ListUnitsFiltered",
                &(&["inactive", "failed", "deactivating"][..],),
            )
        })?;
        let body = reply.body();
        let rows: Vec<UnitRow<'_>> = body.deserialize()?;
        let mut over = Vec::new();
        let mut stopping = false;
        for row in rows {
            if !row.name.ends_with(".mount")
                || !row
                    .description
                    .starts_with(crate::units::CHANNEL_DESCRIPTION_PREFIX)
            {
                continue;
            }
            if row.active_state == "deactivating" || row.job_type == "stop" {
                stopping = true;
            } else if row.job_id == 0 {
                over.push(row.name.to_owned());
            }
        }
        Ok((over, stopping))
    }

    /// The properties of a unit's type interface (`org.freedesktop.systemd1.Scope`, ...), in
    /// one call.
    fn type_properties(&self, unit: &str) -> Result<HashMap<String, zbus::zvariant::OwnedValue>> {
        let interface = match unit.rsplit_once('.').map(|(_, suffix)| suffix) {
            Some("scope") => "org.freedesktop.systemd1.Scope",
            Some("service") => "org.freedesktop.systemd1.Service",
            Some("slice") => "org.freedesktop.systemd1.Slice",
            _ => {
                return Err(Error::usage(format!(
                "{unit} is not a scope, service or slice: only those hold a container's processes"
            )))
            }
        };
        // The unit's object path is its name escaped: no GetUnit round trip to PID 1 first.
        let path = OwnedObjectPath::try_from(unit_object_path(unit))
            .map_err(|e| Error::systemd(format!("no object path for {unit}: {e}")))?;
        let properties = waited(|| self.properties_of(path))?;
        let interface = zbus::names::InterfaceName::from_static_str_unchecked(interface);
        Ok(properties
            .get_all(interface)
            .map_err(zbus::Error::from)?
            .into_iter()
            .collect())
    }

    /// A unit's memory limit and usage, in bytes (`u64::MAX` is infinity / unknown).
    /// The `Where=` of a loaded mount unit; `None` when systemd has no such unit.
    pub fn mount_where(&self, unit: &str) -> Result<Option<String>> {
        let path = match self.manager.get_unit(unit) {
            Ok(path) => path,
            Err(e) => {
                let e = Error::from(e);
                return if e.kind() == Kind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        };
        let properties = self.properties_of(path)?;
        let interface =
            zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Mount");
        let value = properties
            .get(interface, "Where")
            .map_err(zbus::Error::from)?;
        Ok(String::try_from(value).ok())
    }

    /// The properties of the unit at `path` (from `GetUnit`).
    fn properties_of(
        &self,
        path: OwnedObjectPath,
    ) -> Result<zbus::blocking::fdo::PropertiesProxy<'static>> {
        Ok(
            zbus::blocking::fdo::PropertiesProxy::builder(self.manager.inner().connection())
                .destination("org.freedesktop.systemd1")
                .and_then(|b| b.path(path))
                .and_then(|b| b.build())?,
        )
    }

    /// This process's unique name on the bus (`:1.42`).
    pub fn bus_name(&self) -> String {
        self.manager
            .inner()
            .connection()
            .unique_name()
            .map(|name| name.to_string())
            .unwrap_or_default()
    }

    /// Waits until the bus has seen the connection `name` close, so that every call it sent
    /// before has been passed on to systemd ahead of any this process sends next: the bus
    /// passes a client's calls on in order, and its disconnection after them. A dead process's
    /// connection goes within milliseconds; one still there after `limit` belongs to a live one.
    pub fn wait_until_gone(&self, name: &str, limit: std::time::Duration) -> Result<bool> {
        let Ok(name) = zbus::names::BusName::try_from(name) else {
            return Ok(true);
        };
        let bus = zbus::blocking::fdo::DBusProxy::new(self.manager.inner().connection())?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if !bus
                .name_has_owner(name.clone())
                .map_err(|e| Error::systemd(format!("cannot ask the bus about {name}: {e}")))?
            {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether `unit` runs now.
    pub fn is_active(&self, unit: &str) -> Result<bool> {
        Ok(self
            .unit_states(&[unit])?
            .get(unit)
            .is_some_and(UnitStatus::is_active))
    }

    pub fn memory(&self, unit: &str) -> Result<Memory> {
        let all = self.type_properties(unit)?;
        let read = |name: &str| -> u64 {
            all.get(name)
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(u64::MAX)
        };
        Ok(Memory {
            max: read("MemoryMax"),
            limit: read("MemoryLimit"),
            current: read("MemoryCurrent"),
        })
    }

    /// Sets a unit's memory limit at runtime (a drop-in under /run/systemd/transient or
    /// /run/systemd/system.control, gone at reboot like the channel).
    pub fn set_memory_limit(&self, unit: &str, property: &'static str, bytes: u64) -> Result<()> {
        self.manager
            .set_unit_properties(unit, true, &[(property, Value::from(bytes))])
            .map_err(Error::from)
    }

    /// Starts `main` with `aux` loaded beside it (pulled in by `main`'s dependencies), with job
    /// mode `fail`, and waits for the start job of `main` to finish.
    pub fn start_transient(
        &self,
        main: &TransientUnit,
        aux: &[&TransientUnit],
    ) -> Result<JobOutcome> {
        let job = self.queue_start_transient(main, aux)?;
        self.wait_one(&job)
    }

    /// Queues the start of `main` (as [`Systemd::start_transient`]) without waiting for it.
    pub fn queue_start_transient(
        &self,
        main: &TransientUnit,
        aux: &[&TransientUnit],
    ) -> Result<Job> {
        let started = self.queue(
            "StartTransientUnit",
            &start_transient_body(main, aux),
            &main.name,
            JobKind::Start,
        );
        self.again_once_collected(started, main, aux)
    }

    /// A start refused because `main`'s name is held by a stopped unit that systemd has yet
    /// to unload is asked again once it is unloaded; any other outcome is as it was.
    fn again_once_collected(
        &self,
        started: Result<Job>,
        main: &TransientUnit,
        aux: &[&TransientUnit],
    ) -> Result<Job> {
        match started {
            Err(e)
                if e.kind() == Kind::AlreadyExists
                    && self.wait_until_collected(&main.name, COLLECTED_WITHIN)? =>
            {
                self.queue(
                    "StartTransientUnit",
                    &start_transient_body(main, aux),
                    &main.name,
                    JobKind::Start,
                )
            }
            other => other,
        }
    }

    /// Whether `name` is unloaded within `limit`, or is not a stopped unit that systemd has
    /// yet to unload (then `false` at once). A stop job's end is announced before PID 1 unloads
    /// the unit; a channel made again right after its delete, or after a teardown of what a
    /// killed create left, would meet its old unit there for a moment.
    pub fn wait_until_collected(&self, name: &str, limit: std::time::Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + limit;
        let mut nudged = false;
        loop {
            let states = self.unit_states(&[name])?;
            match states.get(name) {
                Some(status) if status.is_over() => {
                    if !nudged {
                        self.nudge_collection(name);
                        nudged = true;
                    }
                }
                Some(status) if status.exists() => return Ok(false),
                _ => return Ok(true),
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            // PID 1 unloads it in the pass after the one that ended its job: a delete waits
            // for this, so it looks again soon (each look is a D-Bus round trip anyway).
            std::thread::sleep(std::time::Duration::from_micros(250));
        }
    }

    /// Has PID 1 look again at whether a stopped unit can be unloaded. systemd 252 decides that
    /// when the unit stops, and not again: a mount whose `OnSuccess=` unit had its start job
    /// queued at that very moment stays loaded, inactive, until something else makes it look,
    /// and its name cannot be used for a new channel. Dropping a reference to the unit is such
    /// a thing (`RefUnit`, then `UnrefUnit`: systemd looks once a unit's last client is gone).
    /// Best effort: a unit gone meanwhile is what was wanted.
    pub fn nudge_collection(&self, name: &str) {
        let manager = self.manager.inner();
        if manager.call_method("RefUnit", &(name,)).is_ok() {
            let _ = manager.call_method("UnrefUnit", &(name,));
        }
    }

    /// Stops a unit and waits for its stop job. `Ok(None)` when systemd does not know the unit.
    pub fn stop(&self, name: &str) -> Result<Option<JobOutcome>> {
        match self.queue_stop(name)? {
            Some(job) => self.wait_one(&job).map(Some),
            None => Ok(None),
        }
    }

    /// Queues a unit's stop (job mode `replace`) without waiting for it; asking for a stop
    /// that is already queued returns that job. `Ok(None)` when systemd does not know the unit.
    pub fn queue_stop(&self, name: &str) -> Result<Option<Job>> {
        match self.queue("StopUnit", &(name, "replace"), name, JobKind::Stop) {
            Ok(job) => Ok(Some(job)),
            Err(e) if e.kind() == Kind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a call that queues a job, subscribed to `JobRemoved` before it, so that the end
    /// of a fast job cannot be missed.
    ///
    /// Any client of the system bus can emit a signal named `JobRemoved`: only those sent by
    /// the peer that answered the call, systemd itself, count. Its unique name comes with the
    /// reply, so checking it costs no extra round trip (a match rule on the well-known name
    /// would first ask the bus who owns it).
    fn queue(
        &self,
        method: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
        unit: &str,
        kind: JobKind,
    ) -> Result<Job> {
        self.watch_unit(unit)?;
        let registered = waited(|| self.manager.inner().call_method(method, body))
            .map_err(Error::from)
            .and_then(|reply| self.register(&reply, unit, kind));
        if registered.is_err() {
            self.unwatch_unit(unit);
        }
        registered
    }

    /// Queues the start of every channel's units, the calls made at once (one thread each),
    /// not one after another's reply: PID 1 then takes them all in before it runs the jobs, so
    /// that the mounts happen together and it sees them in few passes over its mount table,
    /// which its mount-event rate limit counts (5 a second by default). One result per unit,
    /// in order.
    pub fn queue_start_transient_all(
        &self,
        units: &[(&TransientUnit, &[&TransientUnit])],
    ) -> Result<Vec<Result<Job>>> {
        if let [(main, aux)] = units {
            return Ok(vec![self.queue_start_transient(main, aux)]);
        }
        for (at, (main, _)) in units.iter().enumerate() {
            if let Err(e) = self.watch_unit(&main.name) {
                for (main, _) in &units[..at] {
                    self.unwatch_unit(&main.name);
                }
                return Err(e);
            }
        }
        let manager = &self.manager;
        let replies: Vec<zbus::Result<zbus::Message>> = waited(|| {
            std::thread::scope(|scope| {
                let calls: Vec<_> = units
                    .iter()
                    .map(|(main, aux)| {
                        scope.spawn(move || {
                            manager
                                .inner()
                                .call_method("StartTransientUnit", &start_transient_body(main, aux))
                        })
                    })
                    .collect();
                calls
                    .into_iter()
                    .map(|call| {
                        call.join().unwrap_or_else(|_| {
                            Err(zbus::Error::Failure("a D-Bus call thread panicked".into()))
                        })
                    })
                    .collect()
            })
        });
        Ok(replies
            .into_iter()
            .zip(units)
            .map(|(reply, (main, aux))| {
                let started = reply
                    .map_err(Error::from)
                    .and_then(|reply| self.register(&reply, &main.name, JobKind::Start));
                if started.is_err() {
                    self.unwatch_unit(&main.name);
                }
                self.again_once_collected(started, main, aux)
            })
            .collect())
    }
}

/// A unit's D-Bus object path, as systemd makes it (`bus_label_escape`): every byte but a
/// letter, or a digit after the first, is `_` and two lowercase hex digits.
fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
    }
    for (at, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (at > 0 && byte.is_ascii_digit()) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    path
}

/// The arguments of `StartTransientUnit` (`ssa(sv)a(sa(sv))`): `main` with job mode `fail`, and
/// `aux` loaded beside it.
#[allow(clippy::type_complexity)]
fn start_transient_body<'a>(
    main: &'a TransientUnit,
    aux: &[&'a TransientUnit],
) -> (
    &'a str,
    &'static str,
    Vec<(&'a str, Value<'a>)>,
    Vec<(&'a str, Vec<(&'a str, Value<'a>)>)>,
) {
    (
        main.name.as_str(),
        "fail",
        to_dbus(main),
        aux.iter()
            .map(|unit| (unit.name.as_str(), to_dbus(unit)))
            .collect(),
    )
}

fn to_dbus(unit: &TransientUnit) -> Vec<(&str, Value<'_>)> {
    unit.properties
        .iter()
        .map(|p| (p.name, value_of(&p.value)))
        .collect()
}

fn value_of(value: &PropertyValue) -> Value<'_> {
    match value {
        PropertyValue::Str(s) => Value::from(s.as_str()),
        PropertyValue::Bool(b) => Value::from(*b),
        PropertyValue::StrList(items) => {
            Value::from(items.iter().map(String::as_str).collect::<Vec<_>>())
        }
        PropertyValue::Commands(commands) => Value::from(
            commands
                .iter()
                .map(|c| {
                    (
                        c.path.as_str(),
                        c.argv.iter().map(String::as_str).collect::<Vec<_>>(),
                        c.ignore_failure,
                    )
                })
                .collect::<Vec<_>>(),
        ),
    }
}

thread_local! {
    static WAITED: std::cell::Cell<std::time::Duration> =
        const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

/// The time this thread has waited for systemd's answers (its D-Bus calls and the jobs it
/// waited for) since it last asked, and the count starts again: the NRI plugin says it beside
/// each request's time, so that what PID 1 took is told apart from what hostchan took.
pub fn take_time_waited() -> std::time::Duration {
    WAITED.with(|waited| waited.replace(std::time::Duration::ZERO))
}

fn waited<T>(call: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = call();
    WAITED.with(|waited| waited.set(waited.get() + started.elapsed()));
    result
}

/// How long a stopped unit may keep its name after its stop job's end (PID 1 unloads it in
/// its next pass, well within a millisecond when idle).
const COLLECTED_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::unit_object_path;

    /// systemd's own examples (org.freedesktop.systemd1(5): avahi-daemon.service), the root
    /// mount, and a leading digit, which D-Bus does not allow to start a path element.
    #[test]
    fn unit_object_paths_are_systemds() {
        for (unit, path) in [
            ("avahi-daemon.service", "avahi_2ddaemon_2eservice"),
            ("-.mount", "_2d_2emount"),
            ("1x.scope", "_31x_2escope"),
            (
                "cri-containerd-ab12.scope",
                "cri_2dcontainerd_2dab12_2escope",
            ),
            ("", "_"),
        ] {
            assert_eq!(
                unit_object_path(unit),
                format!("/org/freedesktop/systemd1/unit/{path}")
            );
        }
    }
}
