//! Waiting for systemd's jobs: subscribed to `JobRemoved` of a job's unit before the job is
//! queued, each job's end counted only from the peer that queued it, and a look at the units
//! when a report does not come.

use std::collections::HashMap;

use zbus::zvariant::OwnedObjectPath;

use super::{Systemd, UnitStatus};
use crate::error::{Error, Result};

/// How a job ended, from `JobRemoved`'s result string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub unit: String,
    pub result: String,
}

impl JobOutcome {
    pub fn succeeded(&self) -> bool {
        self.result == "done"
    }

    /// The error for a job that did not succeed, explaining systemd's result word.
    pub fn error(&self, verb: &str, owner: Option<&str>) -> Error {
        // The result words of JobRemoved, as systemd's bus-wait-for-jobs.c explains them.
        let why = match (self.result.as_str(), owner) {
            ("dependency", Some(unit)) => {
                format!(", because its owner {unit} stopped or failed")
            }
            ("dependency", None) => ", because a unit it depends on failed".to_owned(),
            ("timeout", _) => ", because it timed out".to_owned(),
            ("canceled", _) => ", because another job replaced it".to_owned(),
            ("failed", _) => ", because the operation itself failed".to_owned(),
            ("assert", _) => ", because an assertion of the unit failed".to_owned(),
            ("unsupported", _) => ", because the unit type is not supported here".to_owned(),
            ("collected", _) => ", because the unit was unloaded meanwhile".to_owned(),
            ("once", _) => ", because the unit may only start once".to_owned(),
            ("invalid", _) => ", because the job does not apply to the unit".to_owned(),
            _ => String::new(),
        };
        Error::systemd(format!(
            "systemd could not {verb} {} (job result: {}){why}; see: journalctl -u {}",
            self.unit, self.result, self.unit
        ))
    }
}

/// A job systemd queued for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    path: OwnedObjectPath,
}

#[cfg(test)]
impl Job {
    /// Job `n`, as the test double of systemd hands them out.
    pub(crate) fn numbered(n: usize) -> Job {
        Job {
            path: OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{n}"))
                .expect("a job's object path"),
        }
    }

    pub(crate) fn path(&self) -> &str {
        self.path.as_str()
    }
}

pub(super) struct JobWatch {
    /// `JobRemoved` signals, passed on by a thread that reads them, so that a wait can stop
    /// listening now and then and look at the units instead.
    removed: std::sync::mpsc::Receiver<zbus::Result<zbus::Message>>,
    /// The units whose `JobRemoved` the bus passes to this process, each with the number of
    /// its jobs queued or about to be.
    units: HashMap<String, usize>,
    /// Jobs queued and not yet ended.
    queued: HashMap<OwnedObjectPath, QueuedJob>,
    /// Jobs that ended before anyone waited for them.
    ended: HashMap<OwnedObjectPath, JobOutcome>,
}

struct QueuedJob {
    /// The unique name of the peer that queued it (systemd, the sender of the call's reply):
    /// only its `JobRemoved` counts.
    systemd: zbus::names::OwnedUniqueName,
    unit: String,
    kind: JobKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobKind {
    Start,
    Stop,
}

/// How long a wait listens for `JobRemoved` before it looks at the units of the jobs it waits
/// for. systemd reports a job's end only on the bus connection it had when the job was
/// queued: when PID 1 connects to the bus anew (a daemon-reexec; seen once in a benchmark
/// without one) the signal can be lost, or come from a name that is not the one that queued
/// the job, and a wait that only listened would never end.
const LOOK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Messages held for the thread that passes `JobRemoved` on: it reads every message the
/// connection gets, and keeps up, so this only absorbs a burst.
const QUEUED_MESSAGES: usize = 4096;

impl Systemd {
    pub(super) fn ensure_watch(&self) -> Result<()> {
        let mut jobs = self.jobs.borrow_mut();
        if jobs.is_none() {
            *jobs = Some(self.watch_jobs()?);
        }
        Ok(())
    }

    /// Has the bus pass this process the `JobRemoved` signals of `unit` (its third argument),
    /// before a call queues a job for it: only those. A match on every `JobRemoved` had the
    /// bus hand each of 64 creates at once the ends of all 64 jobs, 4096 signals, each create's
    /// end queued behind the others'.
    pub(super) fn watch_unit(&self, unit: &str) -> Result<()> {
        self.ensure_watch()?;
        let mut jobs = self.jobs.borrow_mut();
        let watch = jobs
            .as_mut()
            .ok_or_else(|| Error::systemd("JobRemoved is not watched"))?;
        if let Some(count) = watch.units.get_mut(unit) {
            *count += 1;
            return Ok(());
        }
        // Not waited for: the bus handles a connection's messages in order, so the rule is in
        // place before the call that queues the job reaches systemd, and a round trip to the
        // bus stays off each create's path. Were it refused, the wait would look at the unit
        // after half a second instead.
        send_to_bus(self.manager.inner().connection(), "AddMatch", unit)?;
        watch.units.insert(unit.to_owned(), 1);
        Ok(())
    }

    /// The end of [`Systemd::watch_unit`] for one job of `unit` (ended, or never queued): the
    /// bus stops passing its signals once no job of it is left. Not waited for.
    pub(super) fn unwatch_unit(&self, unit: &str) {
        let mut jobs = self.jobs.borrow_mut();
        let Some(watch) = jobs.as_mut() else {
            return;
        };
        unwatch(watch, self.manager.inner().connection(), unit);
    }

    /// Records the job a reply names, with the reply's sender: systemd's unique name.
    pub(super) fn register(&self, reply: &zbus::Message, unit: &str, kind: JobKind) -> Result<Job> {
        let path: OwnedObjectPath = reply.body().deserialize()?;
        let systemd = reply
            .header()
            .sender()
            .map(|name| name.to_owned().into())
            .ok_or_else(|| Error::systemd("systemd's reply has no sender"))?;
        let mut jobs = self.jobs.borrow_mut();
        let watch = jobs
            .as_mut()
            .ok_or_else(|| Error::systemd("a job was queued before JobRemoved was watched"))?;
        watch.queued.insert(
            path.clone(),
            QueuedJob {
                systemd,
                unit: unit.to_owned(),
                kind,
            },
        );
        crate::fail_point::hit("after-job-queued");
        Ok(Job { path })
    }

    fn watch_jobs(&self) -> Result<JobWatch> {
        // Every message the connection gets; the bus sends it the signals of the units
        // watched (`watch_unit`), which this thread picks out.
        let connection = self.manager.inner().connection();
        connection.clone().set_max_queued(QUEUED_MESSAGES);
        let messages = zbus::blocking::MessageIterator::from(connection);
        let (pass_on, removed) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("job-signals".into())
            .spawn(move || {
                for message in messages {
                    let wanted = match &message {
                        Ok(message) => is_job_removed(message),
                        Err(_) => true,
                    };
                    if wanted && pass_on.send(message).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("cannot start a thread", e))?;
        Ok(JobWatch {
            removed,
            units: HashMap::new(),
            queued: HashMap::new(),
            ended: HashMap::new(),
        })
    }

    pub(super) fn wait_one(&self, job: &Job) -> Result<JobOutcome> {
        let mut outcomes = self.wait(std::slice::from_ref(job))?;
        outcomes
            .pop()
            .ok_or_else(|| Error::systemd("no outcome for a job"))
    }

    /// Waits until all these jobs have ended; their outcomes, in the same order.
    pub fn wait(&self, jobs: &[Job]) -> Result<Vec<JobOutcome>> {
        super::waited(|| self.wait_for(jobs))
    }

    fn wait_for(&self, jobs: &[Job]) -> Result<Vec<JobOutcome>> {
        let mut watch = self.jobs.borrow_mut();
        let watch = watch
            .as_mut()
            .ok_or_else(|| Error::systemd("waiting for a job that was never queued"))?;
        if let Some(unknown) = jobs.iter().find(|job| {
            !watch.queued.contains_key(&job.path) && !watch.ended.contains_key(&job.path)
        }) {
            return Err(Error::systemd(format!(
                "waiting for job {} that this process did not queue or waited for already",
                unknown.path.as_str()
            )));
        }
        while !jobs.iter().all(|job| watch.ended.contains_key(&job.path)) {
            let message = match watch.removed.recv_timeout(LOOK_AFTER) {
                Ok(message) => message?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.look_at_units(watch)?;
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::systemd(
                        "the connection to systemd closed while waiting for a job",
                    ))
                }
            };
            let (_id, path, unit, result): (u32, OwnedObjectPath, String, String) =
                message.body().deserialize()?;
            let from_systemd = match (watch.queued.get(&path), message.header().sender()) {
                (Some(queued), Some(sender)) => sender == queued.systemd.inner(),
                _ => false,
            };
            if from_systemd {
                if let Some(queued) = watch.queued.remove(&path) {
                    unwatch(watch, self.manager.inner().connection(), &queued.unit);
                }
                watch.ended.insert(path, JobOutcome { unit, result });
            }
        }
        jobs.iter()
            .map(|job| {
                watch
                    .ended
                    .remove(&job.path)
                    .ok_or_else(|| Error::systemd("a job was named twice in one wait"))
            })
            .collect()
    }
}

impl Systemd {
    /// The jobs still queued whose units no longer have them ended without this process being
    /// told: their outcome is judged from the unit's state (one `ListUnitsByNames` for all).
    fn look_at_units(&self, watch: &mut JobWatch) -> Result<()> {
        let units: Vec<&str> = watch.queued.values().map(|q| q.unit.as_str()).collect();
        if units.is_empty() {
            return Ok(());
        }
        let states = self.unit_states(&units)?;
        let ended: Vec<OwnedObjectPath> = watch
            .queued
            .iter()
            .filter(|(path, queued)| {
                let id = job_id(path);
                !states
                    .get(&queued.unit)
                    .is_some_and(|status| status.exists() && id == Some(status.job_id))
            })
            .map(|(path, _)| path.clone())
            .collect();
        for path in ended {
            if let Some(queued) = watch.queued.remove(&path) {
                unwatch(watch, self.manager.inner().connection(), &queued.unit);
                let status = states.get(&queued.unit);
                let result = judged_result(queued.kind, status);
                tracing::debug!(
                    "systemd did not report the end of job {} for {}: judged {result} from the unit's state",
                    path.as_str(),
                    queued.unit
                );
                watch.ended.insert(
                    path,
                    JobOutcome {
                        unit: queued.unit,
                        result: result.to_owned(),
                    },
                );
            }
        }
        Ok(())
    }
}

/// systemd's `JobRemoved` of `unit`: `(u id, o job, s unit, s result)`.
fn job_removed_rule(unit: &str) -> zbus::Result<zbus::MatchRule<'_>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path("/org/freedesktop/systemd1")?
        .interface("org.freedesktop.systemd1.Manager")?
        .member("JobRemoved")?
        .arg(2, unit)?
        .build())
}

fn is_job_removed(message: &zbus::Message) -> bool {
    let header = message.header();
    message.message_type() == zbus::message::Type::Signal
        && header.member().is_some_and(|m| m.as_str() == "JobRemoved")
        && header
            .interface()
            .is_some_and(|i| i.as_str() == "org.freedesktop.systemd1.Manager")
        && header
            .path()
            .is_some_and(|p| p.as_str() == "/org/freedesktop/systemd1")
}

/// One job of `unit` fewer; at none, the bus is asked to stop passing its signals: a
/// long-lived process (the NRI plugin) must not pile up rules, which the bus limits per
/// connection.
fn unwatch(watch: &mut JobWatch, connection: &zbus::blocking::Connection, unit: &str) {
    let Some(count) = watch.units.get_mut(unit) else {
        return;
    };
    *count = count.saturating_sub(1);
    if *count > 0 {
        return;
    }
    watch.units.remove(unit);
    let _ = send_to_bus(connection, "RemoveMatch", unit);
}

/// `AddMatch` or `RemoveMatch` of `unit`'s `JobRemoved`, sent to the bus without waiting for
/// its answer (`NoReplyExpected`).
fn send_to_bus(
    connection: &zbus::blocking::Connection,
    method: &'static str,
    unit: &str,
) -> zbus::Result<()> {
    let rule = job_removed_rule(unit)?.to_string();
    let message = zbus::Message::method_call("/org/freedesktop/DBus", method)?
        .destination("org.freedesktop.DBus")?
        .interface("org.freedesktop.DBus")?
        .with_flags(zbus::message::Flags::NoReplyExpected)?
        .build(&(rule,))?;
    connection.send(&message)
}

/// The number at the end of a job's object path (`/org/freedesktop/systemd1/job/42`).
fn job_id(path: &OwnedObjectPath) -> Option<u32> {
    path.as_str().rsplit('/').next()?.parse().ok()
}

/// The result word of a job that ended unreported, from its unit as it is now: a start is
/// done if the unit is active, a stop if the unit is inactive or gone.
fn judged_result(kind: JobKind, status: Option<&UnitStatus>) -> &'static str {
    let state = status
        .filter(|s| s.exists())
        .map(|s| s.active_state.as_str());
    match (kind, state) {
        (JobKind::Start, Some("active")) => "done",
        (JobKind::Start, _) => "failed",
        (JobKind::Stop, None | Some("inactive")) => "done",
        (JobKind::Stop, _) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn job_failures_explain_and_point_at_the_journal() {
        let outcome = JobOutcome {
            unit: "run-x.mount".into(),
            result: "dependency".into(),
        };
        let message = outcome.error("start", Some("c.scope")).to_string();
        assert_eq!(
            message,
            "systemd could not start run-x.mount (job result: dependency), because its owner c.scope stopped or failed; see: journalctl -u run-x.mount"
        );
        for (result, because) in [
            ("failed", "the operation itself failed"),
            ("timeout", "it timed out"),
            ("canceled", "another job replaced it"),
            ("collected", "the unit was unloaded meanwhile"),
            ("dependency", "a unit it depends on failed"),
        ] {
            let outcome = JobOutcome {
                unit: "run-x.mount".into(),
                result: result.into(),
            };
            assert!(!outcome.succeeded());
            let error = outcome.error("stop", None);
            assert_eq!(error.kind(), Kind::Systemd);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("systemd could not stop run-x.mount (job result: {result}), because {because}; see: journalctl -u run-x.mount")),
                "{message}"
            );
        }
        let done = JobOutcome {
            unit: "x".into(),
            result: "done".into(),
        };
        assert!(done.succeeded());
    }

    #[test]
    fn jobs_that_ended_unreported_are_judged_from_their_units() {
        let unit = |load: &str, active: &str| UnitStatus {
            name: "run-x.mount".into(),
            load_state: load.into(),
            active_state: active.into(),
            sub_state: String::new(),
            job_id: 0,
            job_type: String::new(),
        };
        use JobKind::{Start, Stop};
        for (kind, status, expected) in [
            (Start, Some(unit("loaded", "active")), "done"),
            (Start, Some(unit("loaded", "failed")), "failed"),
            (Start, Some(unit("loaded", "inactive")), "failed"),
            (Start, Some(unit("not-found", "inactive")), "failed"),
            (Start, None, "failed"),
            (Stop, Some(unit("loaded", "inactive")), "done"),
            (Stop, Some(unit("not-found", "inactive")), "done"),
            (Stop, None, "done"),
            (Stop, Some(unit("loaded", "active")), "failed"),
            (Stop, Some(unit("loaded", "failed")), "failed"),
        ] {
            assert_eq!(
                judged_result(kind, status.as_ref()),
                expected,
                "{kind:?} {status:?}"
            );
        }
        let path = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/42").unwrap();
        assert_eq!(job_id(&path), Some(42));
        let path = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job").unwrap();
        assert_eq!(job_id(&path), None);
    }
}
