//! Kubernetes for real: containerd 1.7 (Debian 13's, fetched by tests/sandbox/containerd.sh)
//! inside the sandboxed systemd, with NRI on, `SystemdCgroup = true` and a busybox image built
//! offline; `hostchan nri` as a unit beside it; host-network pods run through containerd's real
//! CRI API by a CRI client written here (k8s-cri, tonic).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Sandbox, HOSTCHAN};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

const IMAGE: &str = "hostchan.test/busybox:1";
const NRI_SOCKET: &str = "/run/hc-containerd/nri.sock";

/// containerd, unpacked once for the whole run, with its image and configuration.
fn containerd_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::repo().join("target/containerd");
        let script = common::repo().join("tests/sandbox/containerd.sh");
        for args in [vec!["fetch"], vec!["image"], vec!["config", NRI_SOCKET]] {
            let status = std::process::Command::new(&script)
                .arg(args[0])
                .arg(&dir)
                .args(&args[1..])
                .status()
                .expect("run containerd.sh");
            assert!(status.success(), "containerd.sh {args:?} failed");
        }
        dir
    })
}

struct Node {
    sandbox: Sandbox,
    runtime: tokio::runtime::Runtime,
    cri: RuntimeServiceClient<Channel>,
}

struct Pod {
    id: String,
    config: PodSandboxConfig,
}

impl Node {
    fn start() -> Node {
        let dir = containerd_dir();
        let sandbox = Sandbox::boot();
        sandbox
            .run(&[
                dir.join("../../tests/sandbox/containerd.sh")
                    .to_str()
                    .unwrap(),
                "start",
                dir.to_str().unwrap(),
            ])
            .ok();
        // One runtime for the client's whole life: tonic's channel runs its connection on the
        // runtime it was made on, which only runs while a call is blocked on it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let node = Node {
            cri: Self::connect(&sandbox, &runtime),
            runtime,
            sandbox,
        };
        node.start_plugin();
        node
    }

    fn connect(
        sandbox: &Sandbox,
        runtime: &tokio::runtime::Runtime,
    ) -> RuntimeServiceClient<Channel> {
        let socket = sandbox.path("/run/hc-containerd/containerd.sock");
        let channel = runtime
            .block_on(
                Endpoint::try_from("http://[::]")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to containerd's CRI");
        RuntimeServiceClient::new(channel)
    }

    fn synchronizations(&self) -> usize {
        self.sandbox
            .run(&[
                "journalctl",
                "--no-pager",
                "-o",
                "cat",
                "-u",
                "hostchan-nri.service",
            ])
            .stdout
            .matches("synchronized with")
            .count()
    }

    fn start_plugin(&self) {
        let before = self.synchronizations();
        self.sandbox
            .run(&[
                "systemd-run",
                "--quiet",
                "--unit=hostchan-nri",
                HOSTCHAN,
                "nri",
                "--socket",
                NRI_SOCKET,
            ])
            .ok();
        self.sandbox.wait_for(
            || self.synchronizations() > before,
            "the plugin to register and synchronize",
        );
    }

    fn stop_plugin(&self) {
        self.sandbox
            .run(&["systemctl", "stop", "hostchan-nri"])
            .ok();
    }

    fn cri<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.runtime.block_on(call).map(tonic::Response::into_inner)
    }

    fn run_pod(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Pod {
        let host_network = NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        };
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{namespace}-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            // Host-network pods keep the node's name (the kubelet sends none).
            hostname: String::new(),
            log_directory: format!("/run/hc-pods/{namespace}-{name}"),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            linux: Some(LinuxPodSandboxConfig {
                // As the kubelet's systemd cgroup driver names a pod's slice.
                cgroup_parent: format!("kubepods-besteffort-poduid_{namespace}_{name}.slice"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut cri = self.cri.clone();
        let id = self
            .cri(cri.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .expect("RunPodSandbox")
            .pod_sandbox_id;
        Pod { id, config }
    }

    fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sleep".into(), "3600".into()],
            log_path: format!("{name}-{attempt}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut cri = self.cri.clone();
        self.cri(cri.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        }))
        .map(|r| r.container_id)
    }

    fn start_container(&self, id: &str) {
        let mut cri = self.cri.clone();
        self.cri(cri.start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .expect("StartContainer");
    }

    fn run_container(&self, pod: &Pod, name: &str, attempt: u32) -> String {
        let id = self
            .create_container(pod, name, attempt)
            .expect("CreateContainer");
        self.start_container(&id);
        id
    }

    /// Runs `script` in the container: its exit code and output.
    fn exec(&self, container: &str, script: &str) -> (i32, String) {
        let mut cri = self.cri.clone();
        let done = self
            .cri(cri.exec_sync(ExecSyncRequest {
                container_id: container.into(),
                cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                timeout: 20,
            }))
            .expect("ExecSync");
        (
            done.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&done.stdout),
                String::from_utf8_lossy(&done.stderr)
            ),
        )
    }

    fn remove_container(&self, id: &str) {
        let mut cri = self.cri.clone();
        self.cri(cri.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        }))
        .expect("StopContainer");
        let mut cri = self.cri.clone();
        self.cri(cri.remove_container(RemoveContainerRequest {
            container_id: id.into(),
        }))
        .expect("RemoveContainer");
    }

    fn remove_pod(&self, pod: &Pod) {
        let mut cri = self.cri.clone();
        self.cri(cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        }))
        .expect("StopPodSandbox");
        let mut cri = self.cri.clone();
        self.cri(cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        }))
        .expect("RemovePodSandbox");
    }

    fn host(&self, script: &str) -> String {
        self.sandbox.sh(script).ok().stdout
    }
}

#[test]
fn a_pod_gets_its_channel_through_nri_and_loses_it_with_the_container() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/web/data";
    let pod = node.run_pod(
        "team-a",
        "web",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/{pod_namespace}/{pod_name}/data:/data:rw:1M",
        )],
    );
    let container = node.run_container(&pod, "app", 0);

    // The host side: a systemd mount unit with the spec's size and mode.
    let options = node
        .sandbox
        .mount_options(host_path)
        .expect("the channel is mounted");
    assert!(options.contains("size=1024k"), "{options}");
    assert_eq!(node.host(&format!("stat -c %a {host_path}")), "1777\n");
    let unit = hostchan::mount_unit_name(std::path::Path::new(host_path));
    assert_eq!(node.sandbox.unit_state(&unit), "active");
    assert_eq!(
        node.sandbox.property(&unit, "BindsTo"),
        format!("cri-containerd-{}.scope", pod.id),
        "bound to the pod's unit until the container has its own"
    );
    assert_eq!(
        node.sandbox
            .unit_state(&format!("hostchan-bind@{container}.service")),
        "active"
    );

    // Both sides see each other's files.
    node.host(&format!("echo from-host > {host_path}/h"));
    let (code, out) = node.exec(
        &container,
        "cat /data/h && echo from-pod > /data/p && grep ' /data ' /proc/mounts",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from-host"), "{out}");
    assert!(out.contains("tmpfs /data tmpfs rw,nosuid,nodev"), "{out}");
    assert_eq!(node.host(&format!("cat {host_path}/p")), "from-pod\n");

    // The size holds inside the container.
    let (code, out) = node.exec(&container, "dd if=/dev/zero of=/data/big bs=64k count=32");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");

    node.remove_container(&container);
    node.sandbox.assert_no_trace(host_path);
    assert_eq!(
        node.sandbox
            .unit_state(&format!("hostchan-bind@{container}.service")),
        "gone"
    );
    node.remove_pod(&pod);
}

#[test]
fn a_pod_lifetime_channel_outlives_a_container_restart_and_goes_with_the_pod() {
    let node = Node::start();
    let host_path = "/run/hostchan/team-a/cache";
    let pod = node.run_pod(
        "team-a",
        "cache",
        &[
            ("io.hostchan.channel", "/run/hostchan/team-a/cache:/cache"),
            ("io.hostchan.lifetime", "pod"),
        ],
    );
    let first = node.run_container(&pod, "app", 0);
    assert_eq!(node.exec(&first, "echo kept > /cache/f").0, 0);
    node.remove_container(&first);
    assert_eq!(node.host(&format!("cat {host_path}/f")), "kept\n");

    // The kubelet's restart: a new container of the same name in the same pod.
    let second = node.run_container(&pod, "app", 1);
    let (code, out) = node.exec(&second, "cat /cache/f");
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    node.remove_container(&second);
    node.remove_pod(&pod);
    node.sandbox.assert_no_trace(host_path);
}

#[test]
fn a_bad_annotation_fails_the_containers_creation_and_leaves_nothing() {
    let node = Node::start();
    let pod = node.run_pod(
        "team-a",
        "bad",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/bad:/data:rw:lots",
        )],
    );
    let error = node.create_container(&pod, "app", 0).unwrap_err();
    eprintln!("CreateContainer: {}", error.message());
    assert!(
        error.message().contains("hostchan: "),
        "{}",
        error.message()
    );
    assert!(error.message().contains("lots"), "{}", error.message());
    node.sandbox.assert_no_trace("/run/hostchan/team-a/bad");

    // Another namespace's subtree is not this pod's to ask for.
    let intruder = node.run_pod(
        "team-b",
        "intruder",
        &[("io.hostchan.channel", "/run/hostchan/team-a/stolen:/data")],
    );
    let error = node.create_container(&intruder, "app", 0).unwrap_err();
    assert!(error.message().contains("team-b"), "{}", error.message());
    node.sandbox.assert_no_trace("/run/hostchan/team-a/stolen");
    node.remove_pod(&pod);
    node.remove_pod(&intruder);
}

#[test]
fn the_plugins_restart_keeps_live_channels_and_removes_orphans() {
    let node = Node::start();
    let pod = node.run_pod(
        "team-a",
        "sync",
        &[(
            "io.hostchan.channel",
            "/run/hostchan/team-a/sync/{id}:/data",
        )],
    );
    let live = node.run_container(&pod, "live", 0);
    let orphan = node.create_container(&pod, "orphan", 0).unwrap();
    let live_path = format!("/run/hostchan/team-a/sync/{live}");
    let orphan_path = format!("/run/hostchan/team-a/sync/{orphan}");
    assert!(node.sandbox.mount_options(&orphan_path).is_some());

    // While the plugin is down its container goes (never started: no unit of its own).
    node.stop_plugin();
    let mut cri = node.cri.clone();
    node.cri(cri.remove_container(RemoveContainerRequest {
        container_id: orphan.clone(),
    }))
    .unwrap();
    assert!(node.sandbox.mount_options(&orphan_path).is_some());

    node.start_plugin();
    assert!(
        !node.sandbox.path(&orphan_path).exists(),
        "{orphan_path} still exists"
    );
    assert_eq!(node.sandbox.mount_options(&orphan_path), None);
    let units = node.sandbox.channel_units();
    assert!(
        !units.is_empty() && units.iter().all(|unit| unit.contains(&live)),
        "{units:?}"
    );
    assert_eq!(
        node.sandbox.record_files().len(),
        1,
        "only the live channel's record"
    );
    assert!(node.sandbox.mount_options(&live_path).is_some());
    assert_eq!(node.exec(&live, "echo ok > /data/x").0, 0);

    // The live container's channel goes with it even while the plugin is down: systemd
    // takes it down with the container's unit.
    node.stop_plugin();
    node.remove_container(&live);
    node.sandbox.wait_for(
        || node.sandbox.mount_options(&live_path).is_none(),
        "the channel to go with its container",
    );
    node.sandbox.wait_for(
        || node.host(&format!("test -e {live_path} || echo gone")) == "gone\n",
        "the directory to go",
    );
    node.remove_pod(&pod);
}
