//! What the plugin does for each event, in plain blocking code over [`Channels`]: the pod and
//! container as the runtime describes them become the annotations' create requests (the same
//! rules, bounds and tenancy as the hook), and the channels made become bind mounts for the
//! runtime to add.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::annotations::{self, Caller};
use crate::channel::{Channels, Created, LivePods};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kube;
use crate::model::Lifetime;
use crate::owner::AskedOwner;
use crate::spec::validate_container_id;
use crate::spec::{Access, ChannelSpec};
use nri_api::api;

/// Where hostchan's own annotations start; nothing else of a pod's is read.
const OWN_ANNOTATIONS: &str = "io.hostchan.";

/// A request's answer against its work, when the answer may not wait for the work: whichever
/// comes first decides whether what the work made stands.
#[derive(Debug, Default)]
pub struct Race(std::sync::Mutex<Option<Settled>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The work ended before the answer gave up on it: what it made stands.
    InTime,
    /// The answer went out without it: what it made is taken back.
    TooLate,
}

impl Race {
    fn settle(&self, as_: Settled) -> bool {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            None => {
                *state = Some(as_);
                true
            }
            Some(settled) => settled == as_,
        }
    }

    /// The work is done: `false` when the answer gave up on it already.
    pub fn finish(&self) -> bool {
        self.settle(Settled::InTime)
    }

    /// The answer goes out without the work: `false` when the work finished in the meantime.
    pub fn give_up(&self) -> bool {
        self.settle(Settled::TooLate)
    }
}

pub struct Handler {
    pub hostchan_binary: PathBuf,
    pub config_path: PathBuf,
    /// The configuration file was named on the command line: it must exist.
    pub config_named: bool,
    /// What the plugin counts, for its metrics.
    pub stats: super::stats::Stats,
}

impl Handler {
    fn channels(&self) -> Channels {
        Channels::new(self.hostchan_binary.clone())
    }

    /// Read for every container that asks for a channel, so that the operator's changes hold
    /// without a restart, as they do for the hook.
    fn config(&self) -> Result<Config> {
        Config::load(&self.config_path, self.config_named)
    }

    /// The ids of every channel now.
    pub fn channel_ids(&self) -> Result<std::collections::HashSet<String>> {
        self.channels().channel_ids()
    }

    /// CreateContainer: makes the channels the pod's annotations ask for this container (all
    /// or none), and returns the bind mounts that put them in it. When the runtime was answered
    /// without them (`race` given up: past the deadline), the channels this made are taken back.
    ///
    /// Channels that are all read-write are answered early: `answer_early` gets their bind
    /// mounts as soon as PID 1 has every start job queued, before the jobs wait out its mount
    /// rate limit, so that containerd's next request (it sends them one at a time) is not held
    /// behind this one's window. The runtime then binds the directory, and the tmpfs reaches the
    /// container by mount propagation (`rslave`) once PID 1 mounts it; StartContainer lets the
    /// container run only once it sees each channel ([`Handler::check_channels_in_place`]). Not
    /// for a read-only channel: the tmpfs would arrive over the read-only bind as read-write.
    pub fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        race: &Race,
        answer_early: &dyn Fn(Vec<api::Mount>),
    ) -> Result<Vec<api::Mount>> {
        let asked = own_annotations(pod, container);
        if asked.is_empty() || container.id == pod.id {
            return Ok(Vec::new());
        }
        let config = self.config()?;
        let id = validate_container_id(&container.id)?;
        let sandbox = validate_container_id(&pod.id)?;
        // Found from the runtime's path as from a process's cgroup, so that the owner is not
        // looked up at systemd before the start: one call fewer per container.
        let owner = match cgroup_of_cgroups_path(pod.linux.cgroups_path.as_str()) {
            Some(cgroup) => AskedOwner::CgroupPath(cgroup),
            // The cgroupfs driver: no unit to bind to; the configuration decides.
            None => AskedOwner::Default,
        };
        let described =
            kube::Pod::of_runtime(&pod.name, &pod.namespace, &pod.uid, &container.name)?;
        let Some(requests) = annotations::requests(
            &config,
            &annotations::Container {
                id: &id,
                annotations: &asked,
                pod: Some(described),
                owner,
                // The runtime does not say how the container's user namespace maps its root.
                root_mapping: None,
                caller: Caller::Nri { sandbox },
                attach: None,
            },
        )?
        else {
            return Ok(Vec::new());
        };
        let channels = self.channels();
        let early = early_bind_mounts(&requests, &config);
        let answered_early = std::cell::Cell::new(false);
        let created = requests
            .create_all_then(&channels, &config, &|| {
                // Where a mount does not propagate, the runtime would refuse the bind (containerd
                // checks) or the container would not see the tmpfs: answered when mounted.
                let reaches = |mounts: &Vec<api::Mount>| {
                    let hosts: Vec<&Path> = mounts.iter().map(|m| Path::new(&m.source)).collect();
                    crate::inject::mounts_reach_bound_copies(&hosts).unwrap_or(false)
                };
                if let Some(mounts) = early.as_ref().filter(|m| reaches(m)) {
                    if race.finish() {
                        answered_early.set(true);
                        answer_early(mounts.clone());
                    }
                }
            })
            .inspect_err(|e| {
                if answered_early.get() {
                    tracing::error!(
                        "container {} ({id}) of pod {}/{}: its channels failed after the runtime was told they were coming: {e}; its start is refused",
                        container.name,
                        pod.namespace,
                        pod.name
                    );
                }
            })?;
        if !race.finish() {
            self.take_back(&channels, &created, &id);
            return Err(Error::runtime("answered the runtime without the channels"));
        }
        let noexec = config.tmpfs.noexec;
        Ok(created
            .into_iter()
            .filter_map(Created::into_channel)
            .map(|info| {
                tracing::info!(
                    OBJECT_SYSTEMD_UNIT = %info.channel.unit,
                    "channel {} for container {} ({}) of pod {}/{}",
                    info.channel.spec.host_path.display(),
                    container.name,
                    id,
                    pod.namespace,
                    pod.name
                );
                bind_mount(&info.channel.spec, noexec, false)
            })
            .collect())
    }

    /// Deletes the channels a create made for a container the runtime was told is refused.
    fn take_back(&self, channels: &Channels, created: &[Created], container: &str) {
        for created in created {
            let Created::Channel(info) = created else {
                continue;
            };
            let unit = &info.channel.unit;
            match channels.delete(&crate::channel::Target::of_unit(unit)) {
                Ok(_) => tracing::warn!(
                    OBJECT_SYSTEMD_UNIT = %unit,
                    "took back channel {} of container {container}: it was made after the runtime had been told the container is refused",
                    info.channel.spec.host_path.display()
                ),
                Err(e) => tracing::error!(
                    OBJECT_SYSTEMD_UNIT = %unit,
                    "cannot take back channel {} of refused container {container}: {e}; the next Synchronize or hostchan gc removes it",
                    info.channel.spec.host_path.display()
                ),
            }
        }
    }

    /// StartContainer: the container has its unit now.
    pub fn start_container(&self, container: &api::Container) -> Result<()> {
        let Some(unit) = unit_of_cgroups_path(container.linux.cgroups_path.as_str()) else {
            return Ok(());
        };
        let bound = self
            .channels()
            .bind_to_container_unit(&container.id, &unit)?;
        if bound > 0 {
            tracing::info!(
                "{} of container {} now go with {unit}",
                count_channels(bound),
                container.id
            );
        }
        Ok(())
    }

    /// `hostchan metrics` for the node's channels, then the plugin's own counters.
    pub fn metrics_text(&self) -> Result<String> {
        let budget = self
            .config()
            .ok()
            .map(|config| config.node.effective_max_total_size);
        let mut text = crate::metrics::of_node(&self.channels(), budget)?;
        text.push_str(&self.stats.render());
        Ok(text)
    }

    /// StopContainer, RemoveContainer.
    pub fn container_gone(&self, container: &api::Container) -> Result<()> {
        let started = std::time::Instant::now();
        let gone = self.channels().pod_container_gone(&container.id)?;
        if !gone.is_empty() {
            self.stats.torn_down(started.elapsed());
        }
        for info in gone {
            tracing::info!(
                OBJECT_SYSTEMD_UNIT = %info.channel.unit,
                "removed channel {}: container {} is gone",
                info.channel.spec.host_path.display(),
                container.id
            );
        }
        Ok(())
    }

    /// StopPodSandbox, RemovePodSandbox.
    pub fn pod_gone(&self, pod: &api::PodSandbox) -> Result<()> {
        let started = std::time::Instant::now();
        let gone = self.channels().pod_gone(&pod.id)?;
        if !gone.is_empty() {
            self.stats.torn_down(started.elapsed());
        }
        for info in gone {
            tracing::info!(
                OBJECT_SYSTEMD_UNIT = %info.channel.unit,
                "removed channel {}: pod {}/{} is gone",
                info.channel.spec.host_path.display(),
                pod.namespace,
                pod.name
            );
        }
        Ok(())
    }

    /// Synchronize: what the runtime has now, after a (re)connection.
    pub fn synchronize(&self, live: &LivePods) -> Result<()> {
        let orphans = self.channels().reconcile_pods(live)?;
        self.stats.orphans_removed(orphans.len());
        for info in orphans {
            tracing::info!(
                OBJECT_SYSTEMD_UNIT = %info.channel.unit,
                "removed channel {}: its {} is gone",
                info.channel.spec.host_path.display(),
                match info.channel.lifetime {
                    Lifetime::Pod => "pod",
                    _ => "container",
                }
            );
        }
        Ok(())
    }
}

impl Handler {
    /// StartContainer: waits up to `limit` until the container sees each channel its
    /// annotations ask for (the tmpfs mounted on the host, and the same file system at the
    /// container path inside it); how many. An error refuses the start: the channel is not in
    /// its spec (created while the plugin was not serving), not mounted in time, or mounted but
    /// not seen inside (the host path's parent mount is not shared, so the mount did not
    /// propagate to a container bound before it).
    pub fn check_channels_in_place(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        limit: std::time::Duration,
    ) -> Result<usize> {
        let specs = asked_channels(&self.config()?, pod, container)?;
        for spec in &specs {
            if !bound_in_spec(container, spec) {
                return Err(Error::runtime(format!(
                    "it was created without its channel at {} (the plugin was not serving); delete its pod so that it is made again with the channel",
                    spec.container_path.display()
                )));
            }
        }
        let until = std::time::Instant::now() + limit;
        loop {
            // Watched before looking, so that a mount between the look and the wait is seen.
            let mut changes = crate::hostfs::MountChanges::watch()?;
            let mut waiting_for = None;
            for spec in &specs {
                let Some(device) = crate::hostfs::mounted_device(&spec.host_path)? else {
                    waiting_for = Some(&spec.host_path);
                    break;
                };
                // The task's init, there since the runtime created the task (0: not told).
                let pid = i32::try_from(container.pid).unwrap_or(0);
                if pid > 0 && !crate::inject::sees_device(pid, &spec.container_path, device)? {
                    return Err(Error::runtime(format!(
                        "it does not see its channel at {} though {} is mounted: the mount did not reach the container; make the host path's parent mount shared (mount --make-shared)",
                        spec.container_path.display(),
                        spec.host_path.display()
                    )));
                }
            }
            let Some(host_path) = waiting_for else {
                return Ok(specs.len());
            };
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::systemd(format!(
                    "systemd did not mount {} within {:.1} s",
                    host_path.display(),
                    limit.as_secs_f64()
                )));
            }
            changes.wait(left)?;
        }
    }

    /// Synchronize: the live containers that asked for a channel the runtime did not mount in
    /// them, each with the container path it lacks. Such a container was created while the
    /// plugin was not serving (down, restarting, or cut off mid-request), and the runtime went
    /// on without it; the NRI of containerd 1.7 to 2.1 gives a plugin no way to stop it, so it
    /// is reported.
    pub fn without_their_channels(
        &self,
        pods: &[api::PodSandbox],
        containers: &[api::Container],
    ) -> Result<Checked> {
        use api::ContainerState as State;
        let config = self.config()?;
        let mut checked = 0;
        let mut missing = Vec::new();
        for container in containers {
            let state = container.state.enum_value_or(State::CONTAINER_UNKNOWN);
            let Some(pod) = pods.iter().find(|pod| pod.id == container.pod_sandbox_id) else {
                continue;
            };
            if !matches!(state, State::CONTAINER_CREATED | State::CONTAINER_RUNNING) {
                continue;
            }
            // Annotations its create refused: the container was refused too.
            let specs = match asked_channels(&config, pod, container) {
                Ok(specs) if !specs.is_empty() => specs,
                _ => continue,
            };
            checked += 1;
            let name = format!(
                "{}/{}/{} ({})",
                pod.namespace, pod.name, container.name, container.id
            );
            for spec in specs {
                if !bound_in_spec(container, &spec) {
                    missing.push((name.clone(), spec.container_path));
                }
            }
        }
        Ok(Checked { checked, missing })
    }
}

/// The channels a pod's container asks for (none for the sandbox), parsed as its create
/// parses them.
fn asked_channels(
    config: &Config,
    pod: &api::PodSandbox,
    container: &api::Container,
) -> Result<Vec<ChannelSpec>> {
    let asked = own_annotations(pod, container);
    if asked.is_empty() || container.id == pod.id {
        return Ok(Vec::new());
    }
    let described = kube::Pod::of_runtime(&pod.name, &pod.namespace, &pod.uid, &container.name)?;
    annotations::asked_channels(config, &asked, &described, &container.id)
}

/// Whether the runtime put the channel's bind mount in the container's spec.
fn bound_in_spec(container: &api::Container, spec: &ChannelSpec) -> bool {
    container.mounts.iter().any(|mount| {
        Path::new(&mount.destination) == spec.container_path
            && Path::new(&mount.source) == spec.host_path
    })
}

/// What Synchronize found of the live containers that asked for channels.
pub struct Checked {
    pub checked: usize,
    /// Each container that lacks a channel, with the container path it lacks.
    pub missing: Vec<(String, PathBuf)>,
}

/// "1 channel", "2 channels": for the journal's lines.
pub fn count_channels(n: usize) -> String {
    match n {
        1 => "1 channel".to_owned(),
        n => format!("{n} channels"),
    }
}

/// The pods and the containers still created or running, with the unit of each.
pub fn live_pods(pods: &[api::PodSandbox], containers: &[api::Container]) -> LivePods {
    use api::ContainerState as State;
    let mut live = LivePods::default();
    live.pods.extend(pods.iter().map(|pod| pod.id.clone()));
    for container in containers {
        let state = container.state.enum_value_or(State::CONTAINER_UNKNOWN);
        if matches!(
            state,
            State::CONTAINER_CREATED | State::CONTAINER_PAUSED | State::CONTAINER_RUNNING
        ) {
            let unit = (state != State::CONTAINER_CREATED)
                .then(|| unit_of_cgroups_path(container.linux.cgroups_path.as_str()))
                .flatten();
            live.containers.insert(container.id.clone(), unit);
        }
    }
    live
}

/// hostchan's annotations of the pod, and of the container over them (a runtime may copy the
/// pod's into the container's). The pod's name, namespace and uid are the runtime's fields,
/// never annotations, which the pod's author writes.
fn own_annotations(pod: &api::PodSandbox, container: &api::Container) -> BTreeMap<String, String> {
    pod.annotations
        .iter()
        .chain(container.annotations.iter())
        .filter(|(key, _)| key.starts_with(OWN_ANNOTATIONS))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The unit of a container whose runtime uses the systemd cgroup driver: `SLICE:PREFIX:NAME`
/// (runc's and crun's form of cgroupsPath) is `PREFIX-NAME.scope`. `None` for the cgroupfs
/// driver's paths.
pub fn unit_of_cgroups_path(path: &str) -> Option<String> {
    cgroup_of_cgroups_path(path).and_then(|cgroup| cgroup.rsplit('/').next().map(str::to_owned))
}

/// The systemd cgroup path `SLICE:PREFIX:NAME` stands for: the slice where systemd puts it
/// (a slice is named after its parents: `a-b.slice` is in `a.slice`; runc and crun put a scope
/// without one in `system.slice`), then `PREFIX-NAME.scope`. `None` for the cgroupfs driver's
/// paths.
pub fn cgroup_of_cgroups_path(path: &str) -> Option<String> {
    let mut parts = path.split(':');
    let (Some(slice), Some(prefix), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let plain = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice")?;
    if !plain(slice) || !plain(prefix) || !plain(name) {
        return None;
    }
    let mut cgroup = String::new();
    // `-.slice` is the root slice: the scope sits at the top.
    if stem != "-" {
        let mut parent = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return None;
            }
            if !parent.is_empty() {
                parent.push('-');
            }
            parent.push_str(part);
            cgroup.push_str(&format!("/{parent}.slice"));
        }
    }
    Some(format!("{cgroup}/{prefix}-{name}.scope"))
}

/// The bind mounts to answer before the channels are mounted: only when every channel is
/// read-write (see [`Handler::create_container`]).
fn early_bind_mounts(
    requests: &annotations::AnnotatedChannels,
    config: &Config,
) -> Option<Vec<api::Mount>> {
    let mut mounts = Vec::with_capacity(requests.0.len());
    for asked in &requests.0 {
        let spec = &asked.options.spec;
        if spec.access != Access::Rw {
            return None;
        }
        mounts.push(bind_mount(spec, config.tmpfs.noexec, true));
    }
    Some(mounts)
}

/// The runtime's bind mount of a channel into the container: read-only or not as the spec says,
/// never a way to gain privileges or reach devices. `before_mounted`: the tmpfs is not there
/// yet, and comes in by propagation from the host (`rslave`).
fn bind_mount(spec: &ChannelSpec, noexec: bool, before_mounted: bool) -> api::Mount {
    let mut options = vec![
        "bind".to_owned(),
        match spec.access {
            Access::Rw => "rw",
            Access::Ro => "ro",
        }
        .to_owned(),
        "nosuid".to_owned(),
        "nodev".to_owned(),
    ];
    if noexec {
        options.push("noexec".to_owned());
    }
    if before_mounted {
        options.push("rslave".to_owned());
    }
    api::Mount {
        destination: spec.container_path.display().to_string(),
        type_: "bind".to_owned(),
        source: spec.host_path.display().to_string(),
        options,
        ..Default::default()
    }
}

/// An error as the runtime shows it: one line, which containerd puts in the kubelet's event.
pub fn refusal(error: &Error) -> String {
    format!("hostchan: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_of_systemd_cgroup_paths() {
        assert_eq!(
            unit_of_cgroups_path("kubepods-besteffort-pod1.slice:cri-containerd:abc").as_deref(),
            Some("cri-containerd-abc.scope")
        );
        assert_eq!(
            unit_of_cgroups_path(":cri-containerd:abc").as_deref(),
            Some("cri-containerd-abc.scope")
        );
        assert_eq!(
            cgroup_of_cgroups_path("kubepods-besteffort-pod1.slice:cri-containerd:abc").as_deref(),
            Some("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            cgroup_of_cgroups_path(":crio:abc").as_deref(),
            Some("/system.slice/crio-abc.scope")
        );
        assert_eq!(
            cgroup_of_cgroups_path("-.slice:crio:abc").as_deref(),
            Some("/crio-abc.scope")
        );
        assert_eq!(
            cgroup_of_cgroups_path("user-1000.slice:cri-containerd:abc").as_deref(),
            Some("/user.slice/user-1000.slice/cri-containerd-abc.scope")
        );
        for not_systemd in [
            "",
            "/kubepods/besteffort/pod1/abc",
            "a.slice:crio",
            "a.slice:crio:x:y",
            "a.slice:cri/o:x",
            "a.slice::x",
            "a:cri:x",
            "a--b.slice:cri:x",
            "-a.slice:cri:x",
            "a/b.slice:cri:x",
        ] {
            assert_eq!(unit_of_cgroups_path(not_systemd), None, "{not_systemd}");
        }
    }

    #[test]
    fn only_hostchans_annotations_are_read() {
        let pod = api::PodSandbox {
            annotations: [
                ("io.hostchan.channel", "/run/hostchan/ns/a:/a"),
                ("io.kubernetes.cri.sandbox-namespace", "other"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        };
        let container = api::Container {
            annotations: [("io.hostchan.lifetime", "pod"), ("x", "y")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        let keys: Vec<String> = own_annotations(&pod, &container).into_keys().collect();
        assert_eq!(keys, ["io.hostchan.channel", "io.hostchan.lifetime"]);
    }

    #[test]
    fn live_containers_are_the_ones_not_stopped() {
        use api::ContainerState as State;
        let container = |id: &str, state: State| api::Container {
            id: id.to_owned(),
            state: state.into(),
            linux: nri_api::protobuf::MessageField::some(api::LinuxContainer {
                cgroups_path: format!("s.slice:cri-containerd:{id}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = [api::PodSandbox {
            id: "p".into(),
            ..Default::default()
        }];
        let live = live_pods(
            &pods,
            &[
                container("made", State::CONTAINER_CREATED),
                container("runs", State::CONTAINER_RUNNING),
                container("stopped", State::CONTAINER_STOPPED),
            ],
        );
        assert!(live.pods.contains("p"));
        assert_eq!(live.containers.get("made"), Some(&None));
        assert_eq!(
            live.containers.get("runs"),
            Some(&Some("cri-containerd-runs.scope".to_owned()))
        );
        assert!(!live.containers.contains_key("stopped"));
    }

    #[test]
    fn bind_mounts_say_ro_or_rw_and_no_privileges() {
        let mut channel = crate::model::tests::channel("/run/hostchan/ns/a", None);
        channel.spec.access = Access::Ro;
        let mount = bind_mount(&channel.spec, true, false);
        assert_eq!(mount.type_, "bind");
        assert_eq!(mount.source, channel.spec.host_path.display().to_string());
        assert_eq!(mount.options, ["bind", "ro", "nosuid", "nodev", "noexec"]);
    }
}
