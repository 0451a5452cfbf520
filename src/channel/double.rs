//! Unit tests of the lifecycle's logic against a double of systemd (the `SystemdOps` seam):
//! what a reconciliation keeps and deletes, the binder a container's start makes, a teardown
//! that goes on past a unit it cannot stop, the keeper of `delete`-lifetime channels, and a
//! create that takes back what it made when systemd refuses one of its channels.
//! Records live in a scratch store; nothing is mounted, and no root is needed.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::pods::LivePods;
use super::teardown::OnError;
use super::Channels;
use crate::error::{Error, Result};
use crate::model::{tests::channel, Channel, Lifetime};
use crate::record::{Record, Store};
use crate::systemd::{Job, JobOutcome, Memory, OwnerFacts, SystemdOps, UnitStatus};
use crate::test_scratch::Scratch;
use crate::units::{PropertyValue, TransientUnit};

/// systemd as far as the lifecycle sees it: units active or not, jobs that end as asked.
#[derive(Default)]
struct Double {
    active: RefCell<HashSet<String>>,
    /// Every unit started, in order.
    started: RefCell<Vec<TransientUnit>>,
    /// Every unit stopped, in order.
    stopped: RefCell<Vec<String>>,
    /// Units whose stop cannot even be asked for.
    refuse_stop: HashSet<String>,
    /// Units whose start systemd refuses.
    refuse_start: HashSet<String>,
    /// Queued jobs: their unit and whether they start it.
    jobs: RefCell<HashMap<String, (String, bool)>>,
    /// The calls PID 1 would have answered, in order, by the D-Bus methods they take.
    calls: RefCell<Vec<&'static str>>,
}

impl Double {
    fn with_active(units: &[&str]) -> Double {
        let double = Double::default();
        double
            .active
            .borrow_mut()
            .extend(units.iter().map(|u| (*u).to_owned()));
        double
    }

    fn job(&self, unit: &str, start: bool) -> Job {
        let mut jobs = self.jobs.borrow_mut();
        let job = Job::numbered(jobs.len() + 1);
        jobs.insert(job.path().to_owned(), (unit.to_owned(), start));
        job
    }

    fn status(&self, name: &str) -> UnitStatus {
        let active = self.active.borrow().contains(name);
        UnitStatus {
            name: name.to_owned(),
            load_state: if active { "loaded" } else { "not-found" }.to_owned(),
            active_state: if active { "active" } else { "inactive" }.to_owned(),
            sub_state: if active { "mounted" } else { "dead" }.to_owned(),
            job_id: 0,
            job_type: String::new(),
        }
    }

    fn end(&self, unit: &str, start: bool) -> JobOutcome {
        if start {
            self.active.borrow_mut().insert(unit.to_owned());
        } else {
            self.active.borrow_mut().remove(unit);
            self.stopped.borrow_mut().push(unit.to_owned());
        }
        JobOutcome {
            unit: unit.to_owned(),
            result: "done".to_owned(),
        }
    }
}

impl SystemdOps for Rc<Double> {
    fn bus_name(&self) -> String {
        ":1.42".to_owned()
    }
    fn settling_channel_mounts(&self) -> Result<(Vec<String>, bool)> {
        Ok((Vec::new(), false))
    }
    fn unit_states(&self, names: &[&str]) -> Result<HashMap<String, UnitStatus>> {
        self.calls.borrow_mut().push("ListUnitsByNames");
        Ok(names
            .iter()
            .map(|name| ((*name).to_owned(), self.status(name)))
            .collect())
    }
    fn is_active(&self, unit: &str) -> Result<bool> {
        Ok(self.active.borrow().contains(unit))
    }
    fn mount_where(&self, _: &str) -> Result<Option<String>> {
        Ok(None)
    }
    fn memory(&self, _: &str) -> Result<Memory> {
        self.calls.borrow_mut().extend(["GetUnit", "GetAll"]);
        Ok(Memory {
            max: u64::MAX,
            limit: u64::MAX,
            current: 0,
        })
    }
    fn owner_facts(&self, unit: &str) -> Result<OwnerFacts> {
        self.calls.borrow_mut().push("GetAll");
        Ok(OwnerFacts {
            status: self.status(unit),
            control_group: format!("/system.slice/{unit}"),
            memory: Memory {
                max: u64::MAX,
                limit: u64::MAX,
                current: 0,
            },
        })
    }
    fn set_memory_limit(&self, _: &str, _: &'static str, _: u64) -> Result<()> {
        Ok(())
    }
    fn start_transient(&self, main: &TransientUnit, _: &[&TransientUnit]) -> Result<JobOutcome> {
        self.started.borrow_mut().push(main.clone());
        Ok(self.end(&main.name, true))
    }
    fn queue_start_transient_all(
        &self,
        units: &[(&TransientUnit, &[&TransientUnit])],
    ) -> Result<Vec<Result<Job>>> {
        Ok(units
            .iter()
            .map(|(main, _)| {
                self.calls.borrow_mut().push("StartTransientUnit");
                if self.refuse_start.contains(&main.name) {
                    return Err(Error::systemd(format!("refused to start {}", main.name)));
                }
                self.started.borrow_mut().push((*main).clone());
                Ok(self.job(&main.name, true))
            })
            .collect())
    }
    fn stop(&self, name: &str) -> Result<Option<JobOutcome>> {
        Ok(self.queue_stop(name)?.map(|_| self.end(name, false)))
    }
    fn queue_stop(&self, name: &str) -> Result<Option<Job>> {
        if self.refuse_stop.contains(name) {
            return Err(Error::systemd(format!("access denied to stop {name}")));
        }
        Ok(self
            .active
            .borrow()
            .contains(name)
            .then(|| self.job(name, false)))
    }
    fn wait(&self, jobs: &[Job]) -> Result<Vec<JobOutcome>> {
        jobs.iter()
            .map(|job| {
                let (unit, start) = self
                    .jobs
                    .borrow()
                    .get(job.path())
                    .cloned()
                    .ok_or_else(|| Error::systemd("a job the double never queued"))?;
                Ok(self.end(&unit, start))
            })
            .collect()
    }
    fn wait_until_gone(&self, _: &str, _: Duration) -> Result<bool> {
        Ok(true)
    }
    fn nudge_collection(&self, _: &str) {}
}

/// A pod's channel at `host_path`, recorded in `store` (nothing is made on the disk).
fn pod_channel(
    store: &Store,
    host_path: &str,
    pod: &str,
    container: Option<&str>,
    lifetime: Lifetime,
) -> Channel {
    let mut made = channel(host_path, Some("cri-containerd-pod.scope"));
    // Each channel its own id, as creates draw them.
    let id = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        host_path.hash(&mut hasher);
        hasher.finish()
    };
    made.id = format!("{id:016x}{id:016x}");
    made.pod = Some(pod.to_owned());
    made.container = container.map(str::to_owned);
    made.lifetime = lifetime;
    let record = Record::new(made.clone(), Vec::new());
    store.create_checked(|_| Ok(record)).expect("a record");
    made
}

fn channels(scratch: &Scratch, double: &Rc<Double>) -> (Channels, Store) {
    let dir = scratch.0.join("channels");
    let channels = Channels::with(
        Store::new(dir.clone()),
        "/usr/bin/hostchan".into(),
        Box::new(double.clone()),
    );
    (channels, Store::new(dir))
}

fn units_recorded(store: &Store) -> Vec<String> {
    store.unit_names().expect("the records")
}

#[test]
fn reconciling_keeps_live_pods_channels_and_deletes_the_rest() {
    let scratch = Scratch::new("double-reconcile");
    let double = Rc::new(Double::default());
    let (channels, store) = channels(&scratch, &double);
    let live = pod_channel(
        &store,
        "/run/hostchan/ns/live",
        "p1",
        Some("c1"),
        Lifetime::Container,
    );
    let gone_container = pod_channel(
        &store,
        "/run/hostchan/ns/gone-c",
        "p1",
        Some("c2"),
        Lifetime::Container,
    );
    let gone_pod = pod_channel(&store, "/run/hostchan/ns/gone-p", "p2", None, Lifetime::Pod);
    let pods = pod_channel(&store, "/run/hostchan/ns/pod", "p1", None, Lifetime::Pod);
    for made in [&live, &gone_container, &gone_pod, &pods] {
        double
            .active
            .borrow_mut()
            .extend(made.units().map(str::to_owned));
    }
    let mut view = LivePods::default();
    view.pods.insert("p1".into());
    view.containers
        .insert("c1".into(), Some("cri-containerd-c1.scope".into()));
    view.judged = Some(
        [&live, &gone_container, &gone_pod, &pods]
            .iter()
            .map(|c| c.id.clone())
            .collect(),
    );
    // Made after the runtime's view was taken: not judged by it, kept.
    let late = pod_channel(&store, "/run/hostchan/ns/late", "p9", None, Lifetime::Pod);

    let deleted = channels.reconcile_pods(&view).expect("reconciled");

    let mut deleted: Vec<String> = deleted.into_iter().map(|c| c.channel.unit).collect();
    deleted.sort();
    let mut expected = vec![gone_container.unit.clone(), gone_pod.unit.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    let mut kept = units_recorded(&store);
    kept.sort();
    let mut expected = vec![live.unit.clone(), pods.unit.clone(), late.unit.clone()];
    expected.sort();
    assert_eq!(kept, expected);
    // The deleted ones' units were stopped, and the live container's channel bound to its unit.
    let stopped = double.stopped.borrow();
    for unit in gone_container.units().chain([gone_pod.unit.as_str()]) {
        assert!(
            stopped.iter().any(|s| s == unit),
            "{unit} not stopped: {stopped:?}"
        );
    }
    assert!(!stopped.contains(&live.unit));
    let started = double.started.borrow();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].name, "hostchan-bind@c1.service");
}

#[test]
fn a_binder_is_started_once_bound_to_the_containers_unit_and_stopping_its_channels() {
    let scratch = Scratch::new("double-binder");
    let double = Rc::new(Double::default());
    let (channels, store) = channels(&scratch, &double);
    let made = pod_channel(
        &store,
        "/run/hostchan/ns/b",
        "p1",
        Some("c1"),
        Lifetime::Container,
    );
    pod_channel(
        &store,
        "/run/hostchan/ns/other",
        "p1",
        Some("c2"),
        Lifetime::Container,
    );

    assert_eq!(
        channels
            .bind_to_container_unit("c1", "cri-containerd-c1.scope")
            .expect("bound"),
        1
    );
    assert_eq!(
        channels
            .bind_to_container_unit("c1", "cri-containerd-c1.scope")
            .expect("bound again"),
        1
    );
    let started = double.started.borrow();
    assert_eq!(started.len(), 1, "started twice: {started:?}");
    let binder = &started[0];
    let property = |name: &str| {
        binder
            .properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.clone())
    };
    let list = |items: &[&str]| {
        Some(PropertyValue::StrList(
            items.iter().map(|s| (*s).to_owned()).collect(),
        ))
    };
    assert_eq!(property("BindsTo"), list(&["cri-containerd-c1.scope"]));
    assert_eq!(property("PropagatesStopTo"), list(&[made.unit.as_str()]));
    // A container without channels gets no binder.
    assert_eq!(channels.bind_to_container_unit("c3", "x.scope").unwrap(), 0);
}

#[test]
fn a_teardown_that_cannot_stop_a_unit_goes_on_and_keeps_that_record() {
    let scratch = Scratch::new("double-teardown");
    let refused = channel("/run/hostchan/ns/refused", None);
    let mut double = Double::with_active(&[]);
    double.refuse_stop.insert(refused.unit.clone());
    let double = Rc::new(double);
    let (channels, store) = channels(&scratch, &double);
    let refused = pod_channel(
        &store,
        "/run/hostchan/ns/refused",
        "p1",
        None,
        Lifetime::Pod,
    );
    let fine = pod_channel(&store, "/run/hostchan/ns/fine", "p1", None, Lifetime::Pod);
    for made in [&refused, &fine] {
        double
            .active
            .borrow_mut()
            .extend(made.units().map(str::to_owned));
    }
    let records: Vec<Record> = store.all().expect("the records");
    let records: Vec<&Record> = records.iter().collect();

    let error = channels
        .tear_down(&double.clone(), &records, OnError::GoOn)
        .expect_err("a refused stop is reported");

    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot stop {}", refused.unit)),
        "{text}"
    );
    assert!(
        text.contains("left /run/hostchan/ns/refused and its record"),
        "{text}"
    );
    // The other channel went whole; the refused one's record stays for gc.
    assert_eq!(units_recorded(&store), vec![refused.unit.clone()]);
    assert!(double.stopped.borrow().contains(&fine.unit));
}

#[test]
fn the_keeper_is_started_once_and_stopped_when_it_keeps_nothing() {
    let scratch = Scratch::new("double-keeper");
    let double = Rc::new(Double::default());
    let (channels, store) = channels(&scratch, &double);
    let keeper = crate::unit_name::keeper_unit_name("c1");
    super::keeper::ensure_keeper(&double.clone(), &keeper, "c1").expect("started");
    super::keeper::ensure_keeper(&double.clone(), &keeper, "c1").expect("running already");
    assert_eq!(double.started.borrow().len(), 1);
    assert!(double.active.borrow().contains(&keeper));

    // While a delete-lifetime channel of the container is recorded, the keeper stays.
    let mut kept = channel("/run/hostchan/ns/kept", Some(&keeper));
    kept.container = Some("c1".into());
    kept.lifetime = Lifetime::Delete;
    store
        .create_checked(|_| Ok(Record::new(kept.clone(), Vec::new())))
        .expect("a record");
    channels.stop_keeper_if_unused("c1").expect("looked");
    assert!(double.active.borrow().contains(&keeper));

    store.remove(&kept.unit, &kept.id).expect("removed");
    channels.stop_keeper_if_unused("c1").expect("stopped");
    assert!(!double.active.borrow().contains(&keeper));
    assert_eq!(*double.stopped.borrow(), vec![keeper]);
}

/// Two channels asked for at once, systemd refusing the second's start: the create fails
/// naming the second, and takes back the first (its mount stopped, its record and directories
/// gone) and the second's record and directories, with nothing left in the scratch tree.
#[test]
fn a_create_refused_for_one_channel_takes_back_every_channel() {
    use super::{Ask, CreateOptions, Given};
    use crate::config::{Config, Machine};
    use crate::model::AskedBy;
    use crate::owner::AskedOwner;
    use crate::spec::{Access, ChannelSpec};

    let scratch = Scratch::new("double-rollback");
    let root = scratch.0.join("host");
    crate::hostfs::make_dir_nofollow(&root, 0o755).expect("the scratch host root");
    let paths = [root.join("ns/a"), root.join("ns/b")];
    let refused = crate::unit_name::mount_unit_name(&paths[1]);
    let double = Rc::new(Double {
        refuse_start: [refused.clone()].into(),
        ..Double::with_active(&["ctr.scope"])
    });
    let (channels, store) = channels(&scratch, &double);
    let config = Config::builtin(&Machine {
        mem_total: 8 << 30,
        page_size: 4096,
    });
    let requests: Vec<CreateOptions> = paths
        .iter()
        .map(|path| {
            let spec = ChannelSpec {
                host_path: path.clone(),
                container_path: "/chan".into(),
                access: Access::Rw,
                size: 1 << 20,
            };
            let ask = Ask {
                owner: AskedOwner::Unit("ctr.scope".into()),
                container: Some("c1".into()),
                pod: None,
                lifetime: Some(Lifetime::Stop),
                given: Given::by(AskedBy::Cli),
            };
            CreateOptions::new(&config, spec, ask).expect("the request")
        })
        .collect();
    let failed = match channels.create_all(&config, &requests) {
        Ok(_) => panic!("systemd refused the second channel, and the create succeeded"),
        Err(failed) => failed,
    };
    assert_eq!(failed.index, 1);
    assert!(
        failed
            .error
            .to_string()
            .contains(&format!("refused to start {refused}")),
        "{}",
        failed.error
    );
    let first = crate::unit_name::mount_unit_name(&paths[0]);
    assert!(
        double.stopped.borrow().contains(&first),
        "{:?}",
        double.stopped
    );
    assert!(!double.active.borrow().contains(&first));
    assert_eq!(units_recorded(&store), Vec::<String>::new());
    for path in &paths {
        assert!(!path.exists(), "{} was left", path.display());
    }
    assert!(
        !root.join("ns").exists(),
        "the parent made for them was left"
    );
}

/// An owner costs PID 1 one call before the channel's start, its state, cgroup and memory
/// together, and none after it: two calls in all for a channel, whether the owner was named
/// (`--scope`) or found from the runtime's cgroup path (the NRI plugin). One found under
/// user.slice is refused with no call at all.
#[test]
fn an_owner_costs_one_call_before_the_start_and_none_after() {
    use super::{Ask, CreateOptions, Given};
    use crate::config::{Config, Machine};
    use crate::model::AskedBy;
    use crate::owner::AskedOwner;
    use crate::spec::{Access, ChannelSpec};

    let scratch = Scratch::new("double-calls");
    let root = scratch.0.join("host");
    crate::hostfs::make_dir_nofollow(&root, 0o755).expect("the scratch host root");
    let config = Config::builtin(&Machine {
        mem_total: 8 << 30,
        page_size: 4096,
    });
    let calls = |name: &str, owner: AskedOwner| -> Result<Vec<&'static str>> {
        let double = Rc::new(Double::with_active(&["cri-containerd-pod1.scope"]));
        let (channels, _) = channels(&scratch, &double);
        let spec = ChannelSpec {
            host_path: root.join(name),
            container_path: "/chan".into(),
            access: Access::Rw,
            size: 1 << 20,
        };
        let ask = Ask {
            owner,
            container: Some("c1".into()),
            pod: Some("pod1".into()),
            lifetime: Some(Lifetime::Container),
            given: Given::by(AskedBy::Cli),
        };
        let options = CreateOptions::new(&config, spec, ask)?;
        channels
            .create_all(&config, &[options])
            .map_err(|failed| failed.error)?;
        let calls = double.calls.borrow().clone();
        Ok(calls)
    };
    let found = calls(
        "found",
        AskedOwner::CgroupPath(
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-pod1.scope".into(),
        ),
    )
    .expect("a channel for the pod's unit");
    assert_eq!(found, ["GetAll", "StartTransientUnit"]);
    let named = calls(
        "named",
        AskedOwner::Unit("cri-containerd-pod1.scope".into()),
    )
    .expect("a channel for the unit named");
    assert_eq!(named, ["GetAll", "StartTransientUnit"]);
    let refused = calls(
        "user",
        AskedOwner::CgroupPath("/user.slice/user-1000.slice/cri-containerd-pod1.scope".into()),
    )
    .expect_err("a unit under user.slice");
    assert!(refused.to_string().contains("user.slice"), "{refused}");
}
