//! The ttrpc side: the plugin service the runtime calls, and the registration with it.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::UnixStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server, TtrpcContext};

use super::api::api::{self, Event};
use super::api::api_ttrpc;
use super::handler::{self, Handler};
use super::mux;
use super::{NriArgs, REGISTRATION_TIMEOUT};
use crate::error::{Error, Result};

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
pub async fn serve(stream: UnixStream, args: &NriArgs, handler: Arc<Handler>) -> Result<()> {
    let (mut connections, trunk) =
        mux::multiplex(stream, &[mux::PLUGIN_SERVICE, mux::RUNTIME_SERVICE]);
    let (Some(runtime_side), Some(plugin_side)) = (connections.pop(), connections.pop()) else {
        return Err(Error::runtime("the NRI multiplexer opened no connections"));
    };
    let service = api_ttrpc::create_plugin(Arc::new(Plugin { handler }));
    // The runtime opens the plugin service's one connection; the listener then waits forever.
    let incoming = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { std::io::Result::Ok(plugin_side) }),
        futures_util::stream::pending(),
    );
    let mut server = Server::new()
        .register_service(service)
        .add_listener(Listener::new(incoming));
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

struct Plugin {
    handler: Arc<Handler>,
}

impl Plugin {
    /// The handler's blocking work (D-Bus, the file system) off the one async thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Handler) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let handler = self.handler.clone();
        tokio::task::spawn_blocking(move || work(&handler))
            .await
            .map_err(|e| Error::runtime(format!("the NRI plugin's worker failed: {e}")))?
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
        tracing::info!(
            "configured by {} {}",
            request.runtime_name,
            request.runtime_version
        );
        Ok(api::ConfigureResponse {
            events: event_mask(EVENTS),
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _: &TtrpcContext,
        request: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        let live = handler::live_pods(&request.pods, &request.containers);
        let (pods, containers) = (live.pods.len(), live.containers.len());
        // A reconciliation that partly failed is logged; the plugin serves all the same.
        if let Err(e) = self
            .blocking(move |handler| handler.synchronize(&live))
            .await
        {
            tracing::error!("synchronizing: {e}");
        }
        tracing::info!("synchronized with {pods} pods and {containers} live containers");
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
        let mounts = self
            .blocking(move |handler| handler.create_container(&request.pod, &request.container))
            .await
            .map_err(|e| {
                tracing::error!("container {name}: {e}");
                refused(&e)
            })?;
        if mounts.is_empty() {
            return Ok(api::CreateContainerResponse::default());
        }
        // The time the runtime waited for us, against its request timeout (2 s by default).
        tracing::info!(
            "container {name}: {} in {:.1} ms",
            handler::count_channels(mounts.len()),
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(api::CreateContainerResponse {
            adjust: protobuf::MessageField::some(api::ContainerAdjustment {
                mounts,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn stop_container(
        &self,
        _: &TtrpcContext,
        request: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        if let Err(e) = self
            .blocking(move |handler| handler.container_gone(&request.container))
            .await
        {
            tracing::error!("{e}");
        }
        Ok(api::StopContainerResponse::default())
    }

    async fn state_change(
        &self,
        _: &TtrpcContext,
        event: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        let done = match event.event.enum_value() {
            Ok(Event::START_CONTAINER) => {
                self.blocking(move |handler| handler.start_container(&event.container))
                    .await
            }
            Ok(Event::REMOVE_CONTAINER) => {
                self.blocking(move |handler| handler.container_gone(&event.container))
                    .await
            }
            Ok(Event::STOP_POD_SANDBOX | Event::REMOVE_POD_SANDBOX) => {
                self.blocking(move |handler| handler.pod_gone(&event.pod))
                    .await
            }
            _ => Ok(()),
        };
        // The container or pod goes on regardless; what is left, Synchronize and gc find.
        if let Err(e) = done {
            tracing::error!("{e}");
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
}
