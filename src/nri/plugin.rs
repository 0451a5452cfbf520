//! The ttrpc side: the plugin service the runtime calls, and the registration with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UnixStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server, TtrpcContext};

use super::handler::{self, Handler, Race};
use super::mux;
use super::notify::notify;
use super::{NriArgs, REGISTRATION_TIMEOUT};
use crate::error::{Error, Result};
use crate::systemd;
use nri_api::api::{self, Event};
use nri_api::api_ttrpc;

/// `ConfigureRequest.request_timeout` (NRI 0.7 and later, in milliseconds), which the NRI 0.6
/// messages the plugin is built from do not name: read from the unknown fields.
const CONFIGURE_REQUEST_TIMEOUT_FIELD: u32 = 5;
/// `SynchronizeRequest.more` and `SynchronizeResponse.more` (NRI 0.7 and later): a Synchronize
/// split in parts, each answered with the same `more`, the last one without.
const SYNCHRONIZE_REQUEST_MORE_FIELD: u32 = 3;
const SYNCHRONIZE_RESPONSE_MORE_FIELD: u32 = 2;

/// How one connection ended, and whether it got as far as serving (registered and synchronized).
pub struct Served {
    pub synchronized: bool,
    pub ended: Result<()>,
}

/// The events the plugin subscribes to; all of them known to every NRI runtime (an unknown one
/// fails the registration).
const EVENTS: &[Event] = &[
    Event::STOP_POD_SANDBOX,
    Event::REMOVE_POD_SANDBOX,
    Event::CREATE_CONTAINER,
    Event::START_CONTAINER,
    Event::STOP_CONTAINER,
    Event::REMOVE_CONTAINER,
];

fn event_mask(events: &[Event]) -> i32 {
    events
        .iter()
        .fold(0, |mask, event| mask | 1 << (*event as i32 - 1))
}

/// Serves one connection to the runtime until it closes.
pub async fn serve(stream: UnixStream, args: &NriArgs, handler: Arc<Handler>) -> Served {
    let synchronized = Arc::new(AtomicBool::new(false));
    let ended = serve_until_closed(stream, args, handler.clone(), synchronized.clone()).await;
    handler.stats.serving.store(false, Ordering::Relaxed);
    Served {
        synchronized: synchronized.load(Ordering::SeqCst),
        ended,
    }
}

async fn serve_until_closed(
    stream: UnixStream,
    args: &NriArgs,
    handler: Arc<Handler>,
    synchronized: Arc<AtomicBool>,
) -> Result<()> {
    let (mut connections, trunk) =
        mux::multiplex(stream, &[mux::PLUGIN_SERVICE, mux::RUNTIME_SERVICE]);
    let (Some(runtime_side), Some(plugin_side)) = (connections.pop(), connections.pop()) else {
        return Err(Error::runtime("the NRI multiplexer opened no connections"));
    };
    let plugin = Plugin {
        handler,
        request_timeout_ms: AtomicU64::new(args.request_timeout.max(1)),
        synchronized,
        sync_parts: Mutex::new(None),
    };
    let mut server = plugin_server(plugin, plugin_side);
    server
        .start()
        .await
        .map_err(|e| Error::runtime(format!("cannot serve the NRI plugin service: {e}")))?;
    let runtime = api_ttrpc::RuntimeClient::new(Client::new(Socket::new(runtime_side)));
    let request = api::RegisterPluginRequest {
        plugin_name: args.name.clone(),
        plugin_idx: args.index.clone(),
        ..Default::default()
    };
    runtime
        .register_plugin(
            ttrpc::context::with_duration(REGISTRATION_TIMEOUT),
            &request,
        )
        .await
        .map_err(|e| {
            Error::runtime(format!(
                "the runtime refused to register NRI plugin {}-{}: {e}",
                args.index, args.name
            ))
        })?;
    tracing::info!(
        "registered with the runtime as NRI plugin {}-{}",
        args.index,
        args.name
    );
    let ended = trunk.await;
    let _ = server.shutdown().await;
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::runtime(format!("the NRI connection failed: {e}"))),
        Err(e) => Err(Error::runtime(format!("the NRI connection failed: {e}"))),
    }
}

/// The ttrpc server of the plugin service on its one connection.
fn plugin_server(plugin: Plugin, connection: tokio::io::DuplexStream) -> Server {
    // The runtime opens the plugin service's one connection; the listener then waits forever.
    let incoming = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { std::io::Result::Ok(connection) }),
        futures_util::stream::pending(),
    );
    Server::new()
        .register_service(api_ttrpc::create_plugin(Arc::new(plugin)))
        .add_listener(Listener::new(incoming))
}

struct Plugin {
    handler: Arc<Handler>,
    /// How long the runtime waits for an answer.
    request_timeout_ms: AtomicU64,
    /// Set at the first Synchronize answered on this connection.
    synchronized: Arc<AtomicBool>,
    /// The parts of a split Synchronize received so far.
    sync_parts: Mutex<Option<(Vec<api::PodSandbox>, Vec<api::Container>)>>,
}

/// How many times a teardown that failed is tried again, and how long apart.
const TEARDOWN_TRIES: u32 = 5;
const TEARDOWN_RETRY_AFTER: Duration = Duration::from_secs(2);

impl Plugin {
    /// Three quarters of the runtime's request timeout: every answer goes out by then, so that
    /// the runtime never drops the plugin (and never goes on without it) for a slow answer.
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(Ordering::Relaxed) * 3 / 4)
    }

    /// The handler's blocking work (D-Bus, the file system) off the one async thread, waited
    /// for until the deadline: `None` when it is still at work then (it goes on regardless).
    async fn within_deadline<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Handler) -> Result<T> + Send + 'static,
    ) -> Option<Result<T>> {
        let handler = self.handler.clone();
        let task = tokio::task::spawn_blocking(move || work(&handler));
        match tokio::time::timeout(self.deadline(), task).await {
            Ok(joined) => Some(joined.unwrap_or_else(|e| {
                Err(Error::runtime(format!(
                    "the NRI plugin's worker failed: {e}"
                )))
            })),
            Err(_) => None,
        }
    }

    /// Work that must not keep the runtime waiting (a teardown, a container's binding, a
    /// reconciliation): done within the deadline if it can be, or else finished after the
    /// answer, and tried again when it fails.
    async fn follow_up(
        &self,
        what: String,
        work: impl Fn(&Handler) -> Result<()> + Send + 'static,
    ) {
        let handler = self.handler.clone();
        let (first_done, first) = tokio::sync::oneshot::channel::<()>();
        let said = what.clone();
        tokio::task::spawn_blocking(move || {
            let mut outcome = work(&handler);
            let _ = first_done.send(());
            let mut attempt = 1;
            while let Err(e) = outcome {
                if attempt == TEARDOWN_TRIES {
                    tracing::error!(
                        "{what}: failed {TEARDOWN_TRIES} times, last: {e}; the next Synchronize or hostchan gc finishes it"
                    );
                    return;
                }
                tracing::warn!(
                    "{what}: {e}; trying again in {} s",
                    TEARDOWN_RETRY_AFTER.as_secs()
                );
                std::thread::sleep(TEARDOWN_RETRY_AFTER);
                attempt += 1;
                outcome = work(&handler);
                if outcome.is_ok() {
                    tracing::info!("{what}: done at try {attempt}");
                }
            }
        });
        if tokio::time::timeout(self.deadline(), first).await.is_err() {
            tracing::warn!(
                "{said}: still at work after {} ms; answered the runtime, finishing in the background",
                self.deadline().as_millis()
            );
        }
    }
}

/// How a CreateContainer's work stood at its answer.
/// What the worker came to, with the time it waited for systemd.
enum Made {
    /// Every start job queued; the channels' bind mounts, answered before PID 1 mounts them.
    Queued(Vec<api::Mount>, Waits),
    Done(Result<Vec<api::Mount>>, Waits),
}

/// What a request's worker waited for, beside its own work: systemd's answers, and a CPU (the
/// time it was runnable but not running, which the journal line shows so that a slow answer
/// on a busy node can be told from a slow plugin).
#[derive(Debug, Clone, Copy, Default)]
struct Waits {
    systemd: Duration,
    cpu: Duration,
    /// For the records' locks, held by other requests' work (theirs finishes after their
    /// answer) or by a `hostchan` command.
    lock: Duration,
}

impl Waits {
    /// What the calling thread waited since `cpu_queue_before` ([`cpu_queue_time`]) and
    /// for systemd since it last asked.
    fn since(cpu_queue_before: Duration) -> Waits {
        Waits {
            systemd: systemd::take_time_waited(),
            cpu: cpu_queue_time().saturating_sub(cpu_queue_before),
            lock: crate::record::take_lock_waited(),
        }
    }
}

/// How long the calling thread has waited on a run queue in all, as the scheduler counts it
/// (the second field of /proc/thread-self/schedstat, in ns); zero where the kernel does not say.
fn cpu_queue_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn adjusted(mounts: Vec<api::Mount>) -> api::CreateContainerResponse {
    api::CreateContainerResponse {
        adjust: nri_api::protobuf::MessageField::some(api::ContainerAdjustment {
            mounts,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A failure the runtime must see: it fails the container's creation with this line.
fn refused(error: &Error) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::FAILED_PRECONDITION,
        handler::refusal(error),
    ))
}

#[async_trait]
impl api_ttrpc::Plugin for Plugin {
    async fn configure(
        &self,
        _: &TtrpcContext,
        request: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        let said = request
            .special_fields
            .unknown_fields()
            .get(CONFIGURE_REQUEST_TIMEOUT_FIELD)
            .and_then(|value| match value {
                nri_api::protobuf::UnknownValueRef::Varint(ms) if ms > 0 => Some(ms),
                _ => None,
            });
        if let Some(ms) = said {
            self.request_timeout_ms.store(ms, Ordering::Relaxed);
            self.handler
                .stats
                .set_request_timeout(Duration::from_millis(ms));
        }
        tracing::info!(
            "configured by {} {}; answering within {} ms (the runtime's request timeout is {} ms{})",
            request.runtime_name,
            request.runtime_version,
            self.deadline().as_millis(),
            self.request_timeout_ms.load(Ordering::Relaxed),
            if said.is_some() { "" } else { ", as --request-timeout says" }
        );
        Ok(api::ConfigureResponse {
            events: event_mask(EVENTS),
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _: &TtrpcContext,
        mut request: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        let more = matches!(
            request
                .special_fields
                .unknown_fields()
                .get(SYNCHRONIZE_REQUEST_MORE_FIELD),
            Some(nri_api::protobuf::UnknownValueRef::Varint(1))
        );
        let (pods, containers) = {
            let mut parts = self.sync_parts.lock().unwrap_or_else(|e| e.into_inner());
            let (pods, containers) = parts.get_or_insert_with(Default::default);
            pods.append(&mut request.pods);
            containers.append(&mut request.containers);
            if more {
                let mut response = api::SynchronizeResponse::default();
                response
                    .special_fields
                    .mut_unknown_fields()
                    .add_varint(SYNCHRONIZE_RESPONSE_MORE_FIELD, 1);
                return Ok(response);
            }
            parts.take().unwrap_or_default()
        };
        let mut live = handler::live_pods(&pods, &containers);
        // Told, never waited for: it reads only the configuration and what the runtime sent.
        let handler = self.handler.clone();
        tokio::task::spawn_blocking(move || {
            match handler.without_their_channels(&pods, &containers) {
                Ok(found) => {
                    for (container, path) in &found.missing {
                        tracing::error!(
                            "container {container} is without its channel at {}: it was created while the plugin was not serving; its start is refused, and if it runs, delete its pod so that it is made again with the channel",
                            path.display()
                        );
                    }
                    if found.checked > 0 {
                        tracing::info!(
                            "checked the channels of {} live containers that asked for them: {} without",
                            found.checked,
                            found.missing.len()
                        );
                    }
                }
                Err(e) => tracing::warn!("cannot check the containers' channels: {e}"),
            }
        });
        // Only the channels there now are judged by this view: one a CreateContainer makes
        // after the answer, while the reconciliation may still be at work, is not in it.
        match self.handler.channel_ids() {
            Ok(ids) => live.judged = Some(ids),
            Err(e) => {
                tracing::error!("synchronizing: {e}; reconciling nothing this time");
                live.judged = Some(Default::default());
            }
        }
        let (pods, containers) = (live.pods.len(), live.containers.len());
        // A reconciliation that partly failed is logged and tried again; the plugin serves all
        // the same.
        self.follow_up("reconciling with the runtime".to_owned(), move |handler| {
            handler.synchronize(&live)
        })
        .await;
        tracing::info!("synchronized with {pods} pods and {containers} live containers");
        self.handler.stats.serving.store(true, Ordering::Relaxed);
        if !self.synchronized.swap(true, Ordering::SeqCst) {
            notify("READY=1\nSTATUS=serving the runtime");
        }
        Ok(api::SynchronizeResponse::default())
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::Empty) -> ttrpc::Result<api::Empty> {
        tracing::info!("the runtime is shutting down");
        Ok(api::Empty::default())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        request: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let started = std::time::Instant::now();
        let name = format!(
            "{}/{}/{}",
            request.pod.namespace, request.pod.name, request.container.name
        );
        let race = Arc::new(Race::default());
        let worker = race.clone();
        let (early, answered_early) = tokio::sync::oneshot::channel::<(Vec<api::Mount>, Waits)>();
        let early = Mutex::new(Some(early));
        let handler = self.handler.clone();
        let work = tokio::task::spawn_blocking(move || {
            systemd::take_time_waited();
            crate::record::take_lock_waited();
            let cpu_queue_before = cpu_queue_time();
            let made =
                handler.create_container(&request.pod, &request.container, &worker, &|mounts| {
                    if let Some(early) = early.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = early.send((mounts, Waits::since(cpu_queue_before)));
                    }
                });
            (made, Waits::since(cpu_queue_before))
        });
        let made = tokio::time::timeout(self.deadline(), async {
            tokio::select! {
                joined = work => {
                    let (made, waited) = joined.unwrap_or_else(|e| {
                        (Err(Error::runtime(format!("the NRI plugin's worker failed: {e}"))), Waits::default())
                    });
                    Made::Done(made, waited)
                }
                Ok((mounts, waited)) = answered_early => Made::Queued(mounts, waited),
            }
        })
        .await
        .ok();
        let past_deadline = made.is_none();
        let (made, waited) = match made {
            Some(Made::Queued(mounts, waited)) => {
                tracing::info!(
                    "container {name}: {} queued in {:.1} ms (systemd {:.1} ms, waiting for a CPU {:.1} ms, for the record lock {:.1} ms); its start waits until it sees them",
                    handler::count_channels(mounts.len()),
                    started.elapsed().as_secs_f64() * 1000.0,
                    waited.systemd.as_secs_f64() * 1000.0,
                    waited.cpu.as_secs_f64() * 1000.0,
                    waited.lock.as_secs_f64() * 1000.0
                );
                self.handler.stats.created(started.elapsed());
                return Ok(adjusted(mounts));
            }
            Some(Made::Done(made, waited)) => (made, waited),
            // Still at work: the container is refused now, and the work takes back what it
            // makes when it ends, unless it ended in the meantime.
            None if race.give_up() => (
                Err(Error::systemd(format!(
                    "systemd did not answer within {:.1} s; the container is refused, and whatever was made for it is taken back",
                    self.deadline().as_secs_f64()
                ))),
                Waits::default(),
            ),
            None => (
                Err(Error::runtime(
                    "the channels were made just past the deadline and are being taken back; the kubelet will try again",
                )),
                Waits::default(),
            ),
        };
        let mounts = made.map_err(|e| {
            tracing::error!(
                "container {name}: refused in {:.1} ms: {e}",
                started.elapsed().as_secs_f64() * 1000.0
            );
            self.handler.stats.refused(&e, past_deadline);
            self.handler.stats.created(started.elapsed());
            refused(&e)
        })?;
        if mounts.is_empty() {
            return Ok(api::CreateContainerResponse::default());
        }
        self.handler.stats.created(started.elapsed());
        // The time the runtime waited for us, against its request timeout (2 s by default).
        tracing::info!(
            "container {name}: {} in {:.1} ms (systemd {:.1} ms, waiting for a CPU {:.1} ms, for the record lock {:.1} ms)",
            handler::count_channels(mounts.len()),
            started.elapsed().as_secs_f64() * 1000.0,
            waited.systemd.as_secs_f64() * 1000.0,
            waited.cpu.as_secs_f64() * 1000.0,
            waited.lock.as_secs_f64() * 1000.0
        );
        Ok(adjusted(mounts))
    }

    async fn stop_container(
        &self,
        _: &TtrpcContext,
        mut request: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        let container = request.container.take().unwrap_or_default();
        self.follow_up(
            format!("container {} stopped", container.id),
            move |handler| handler.container_gone(&container),
        )
        .await;
        Ok(api::StopContainerResponse::default())
    }

    async fn state_change(
        &self,
        _: &TtrpcContext,
        event: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        // But for a start without its channels, the container or pod goes on regardless; what
        // is left, retries, Synchronize and gc find.
        let container = event.container.unwrap_or_default();
        let pod = event.pod.unwrap_or_default();
        match event.event.enum_value() {
            Ok(Event::START_CONTAINER) => {
                // The one refusal here: a container that does not see each channel it asked for
                // does not run.
                let started = std::time::Instant::now();
                let name = format!("{}/{}/{}", pod.namespace, pod.name, container.name);
                let limit = self.deadline().saturating_sub(Duration::from_millis(50));
                let (checked_pod, checked) = (pod.clone(), container.clone());
                let in_place = self
                    .within_deadline(move |handler| {
                        handler.check_channels_in_place(&checked_pod, &checked, limit)
                    })
                    .await
                    .unwrap_or_else(|| {
                        Err(Error::systemd(format!(
                            "its channels were not in place within {:.1} s",
                            self.deadline().as_secs_f64()
                        )))
                    });
                match in_place {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        "container {name}: {} in place at its start, after {:.1} ms",
                        handler::count_channels(n),
                        started.elapsed().as_secs_f64() * 1000.0
                    ),
                    Err(e) => {
                        tracing::error!(
                            "container {name}: start refused in {:.1} ms: {e}",
                            started.elapsed().as_secs_f64() * 1000.0
                        );
                        return Err(refused(&e));
                    }
                }
                self.follow_up(
                    format!("container {} started", container.id),
                    move |handler| handler.start_container(&container),
                )
                .await
            }
            Ok(Event::REMOVE_CONTAINER) => {
                self.follow_up(
                    format!("container {} removed", container.id),
                    move |handler| handler.container_gone(&container),
                )
                .await
            }
            Ok(Event::STOP_POD_SANDBOX | Event::REMOVE_POD_SANDBOX) => {
                self.follow_up(
                    format!("pod {}/{} gone", pod.namespace, pod.name),
                    move |handler| handler.pod_gone(&pod),
                )
                .await
            }
            _ => {}
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_mask_has_one_bit_per_event() {
        // NRI's own values: RunPodSandbox is 1, bit 0; RemoveContainer is 11, bit 10.
        assert_eq!(event_mask(&[Event::RUN_POD_SANDBOX]), 1);
        assert_eq!(event_mask(&[Event::REMOVE_CONTAINER]), 1 << 10);
        assert_eq!(event_mask(EVENTS), 0b110_0010_1110);
    }

    /// containerd 2.3 (NRI 0.12) calls a method per event first and falls back to StateChange
    /// only on UNIMPLEMENTED; any other code fails the event. These are its methods with that
    /// fallback (`pkg/adaptation/plugin_type.go`), none of which this plugin implements.
    const PER_EVENT_METHODS: &[&str] = &[
        "RunPodSandbox",
        "PostUpdatePodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
        "PostUpdateContainer",
        "RemoveContainer",
    ];

    #[test]
    fn a_method_the_plugin_does_not_implement_is_unimplemented() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (plugin_side, runtime_side) = tokio::io::duplex(64 * 1024);
            let plugin = Plugin {
                handler: Arc::new(Handler {
                    hostchan_binary: "/nonexistent/hostchan".into(),
                    config_path: "/nonexistent/config.toml".into(),
                    config_named: false,
                    stats: Default::default(),
                }),
                request_timeout_ms: AtomicU64::new(2000),
                synchronized: Arc::new(AtomicBool::new(false)),
                sync_parts: Mutex::new(None),
            };
            let mut server = plugin_server(plugin, plugin_side);
            server.start().await.unwrap();
            let client = Client::new(Socket::new(runtime_side));
            let call = |method: &str| {
                let request = ttrpc::Request {
                    service: "nri.pkg.api.v1alpha1.Plugin".into(),
                    method: method.into(),
                    timeout_nano: 2_000_000_000,
                    ..Default::default()
                };
                client.request(request)
            };

            // What the plugin implements answers: Configure, with an empty request.
            let configured = call("Configure").await;
            assert!(configured.is_ok(), "Configure: {configured:?}");
            for method in PER_EVENT_METHODS {
                match call(method).await {
                    Err(ttrpc::Error::RpcStatus(status)) => assert_eq!(
                        status.code(),
                        ttrpc::Code::UNIMPLEMENTED,
                        "{method}: {status:?}"
                    ),
                    other => panic!("{method}: expected UNIMPLEMENTED, got {other:?}"),
                }
            }
            let _ = server.shutdown().await;
        });
    }
}
