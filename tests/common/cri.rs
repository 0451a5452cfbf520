//! A small blocking CRI client over containerd's socket, as the kubelet would call it: host-
//! network pods in a systemd-driver slice, busybox containers. Shared by the Kubernetes tests
//! and the NRI benchmark (bench/main.rs includes this file).
// Each includer uses part of it, as with the rest of tests/common.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::*;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The image tests/sandbox/containerd.sh builds (busybox-static) and imports.
pub const IMAGE: &str = "hostchan.test/busybox:1";

pub struct Cri {
    // One runtime for the client's whole life: tonic's channel runs its connection on the
    // runtime it was made on, which only runs while a call is blocked on it.
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// A pod's container started as the kubelet starts it: its id, how long CreateContainer took,
/// and how long from CreateContainer until StartContainer returned; or the runtime's refusal.
pub type Started = Result<(String, Duration, Duration), tonic::Status>;

pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Cri {
    pub fn connect(socket: PathBuf) -> Cri {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let channel = runtime
            .block_on(
                Endpoint::try_from("http://[::]")
                    .expect("a placeholder URI")
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
        Cri {
            runtime,
            client: RuntimeServiceClient::new(channel),
        }
    }

    fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.runtime.block_on(call).map(tonic::Response::into_inner)
    }

    /// Whether the runtime answers (after a restart the first call finds the old connection
    /// broken, and the next one makes a new one).
    pub fn answers(&self) -> bool {
        let mut client = self.client.clone();
        self.call(client.version(VersionRequest::default())).is_ok()
    }

    pub fn run_pod(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Pod {
        let config = Self::pod_config(namespace, name, annotations);
        let mut client = self.client.clone();
        let id = self
            .call(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .expect("RunPodSandbox")
            .pod_sandbox_id;
        Pod { id, config }
    }

    /// `n` pods started at once the way the kubelet starts each: its sandbox, then its
    /// container created and started right after.
    pub fn pods_started_at_once(
        &self,
        namespace: &str,
        n: usize,
        annotations: &[(&str, &str)],
    ) -> Vec<(Pod, Started)> {
        let starts = (0..n).map(|i| {
            let mut client = self.client.clone();
            let config = Self::pod_config(namespace, &format!("k{i}"), annotations);
            async move {
                let id = client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .expect("RunPodSandbox")
                    .into_inner()
                    .pod_sandbox_id;
                let pod = Pod { id, config };
                let started = Instant::now();
                let created = async {
                    let id = client
                        .create_container(Self::create_request(&pod, "app", 0, &[]))
                        .await?
                        .into_inner()
                        .container_id;
                    let create = started.elapsed();
                    client
                        .start_container(StartContainerRequest {
                            container_id: id.clone(),
                        })
                        .await?;
                    Ok((id, create, started.elapsed()))
                }
                .await;
                (pod, created)
            }
        });
        self.runtime.block_on(async {
            let handles: Vec<_> = starts.map(tokio::spawn).collect();
            let mut results = Vec::new();
            for handle in handles {
                results.push(handle.await.expect("a pod's start"));
            }
            results
        })
    }

    fn pod_config(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
        let host_network = NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        };
        PodSandboxConfig {
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
        }
    }

    fn create_request(
        pod: &Pod,
        name: &str,
        attempt: u32,
        annotations: &[(&str, &str)],
    ) -> CreateContainerRequest {
        let config = ContainerConfig {
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
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
        CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        }
    }

    pub fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        self.create_container_with(pod, name, attempt, &[])
    }

    /// CreateContainer with the container's own annotations (a CDI device, say).
    pub fn create_container_with(
        &self,
        pod: &Pod,
        name: &str,
        attempt: u32,
        annotations: &[(&str, &str)],
    ) -> Result<String, tonic::Status> {
        let mut client = self.client.clone();
        self.call(client.create_container(Self::create_request(pod, name, attempt, annotations)))
            .map(|r| r.container_id)
    }

    /// One container named `name` in each pod, all asked for at once, as a kubelet starting
    /// many pods does: each one's id and how long its CreateContainer took.
    pub fn create_containers_at_once(
        &self,
        pods: &[Pod],
        name: &str,
    ) -> Vec<Result<(String, Duration), tonic::Status>> {
        let calls = pods.iter().map(|pod| {
            let mut client = self.client.clone();
            let request = Self::create_request(pod, name, 0, &[]);
            async move {
                let started = Instant::now();
                let response = client.create_container(request).await?;
                Ok((response.into_inner().container_id, started.elapsed()))
            }
        });
        self.runtime.block_on(async {
            let handles: Vec<_> = calls.map(tokio::spawn).collect();
            let mut results = Vec::new();
            for handle in handles {
                results.push(handle.await.expect("a CreateContainer call"));
            }
            results
        })
    }

    pub fn start_container(&self, id: &str) {
        self.start_container_quietly(id).expect("StartContainer");
    }

    /// StartContainer, its refusal returned.
    pub fn start_container_quietly(&self, id: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        self.call(client.start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .map(|_| ())
    }

    pub fn run_container(&self, pod: &Pod, name: &str, attempt: u32) -> String {
        let id = self
            .create_container(pod, name, attempt)
            .expect("CreateContainer");
        self.start_container(&id);
        id
    }

    /// Runs `script` in the container: its exit code and output.
    pub fn exec(&self, container: &str, script: &str) -> (i32, String) {
        let mut client = self.client.clone();
        let done = self
            .call(client.exec_sync(ExecSyncRequest {
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

    /// RemoveContainer alone, as for a container that never started.
    pub fn remove_created_container(&self, id: &str) {
        let mut client = self.client.clone();
        self.call(client.remove_container(RemoveContainerRequest {
            container_id: id.into(),
        }))
        .expect("RemoveContainer");
    }

    /// StopContainer, whatever comes of it.
    pub fn stop_container_quietly(&self, id: &str) -> bool {
        let mut client = self.client.clone();
        self.call(client.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        }))
        .is_ok()
    }

    pub fn remove_container(&self, id: &str) {
        let mut client = self.client.clone();
        self.call(client.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        }))
        .expect("StopContainer");
        self.remove_created_container(id);
    }

    pub fn remove_pod(&self, pod: &Pod) {
        let mut client = self.client.clone();
        self.call(client.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        }))
        .expect("StopPodSandbox");
        let mut client = self.client.clone();
        self.call(client.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        }))
        .expect("RemovePodSandbox");
    }
}
