//! The D-Bus client for systemd's manager: start transient units and wait for their jobs, stop
//! units, and read unit states. One connection per process, on the system bus.

use std::cell::RefCell;

use zbus::zvariant::{OwnedObjectPath, Value};

mod errors;
mod jobs;
mod ops;
mod unit_state;

pub use errors::dbus_errors;
use errors::METHOD_TIMEOUT;
pub use jobs::{Job, JobOutcome};
use jobs::{JobKind, JobWatch};
pub use ops::SystemdOps;
pub use unit_state::{Memory, OwnerFacts, UnitStatus};

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
