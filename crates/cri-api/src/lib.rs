//! The Kubernetes Container Runtime Interface, `runtime.v1`: its messages and its clients,
//! generated (`cargo xtask cri-api`: protox and tonic's generator, no protoc) from
//! `proto/api.proto`, kubernetes/cri-api's (as the k8s-cri crate vendors it). Apache-2.0, see
//! `LICENSE`. For hostchan's Kubernetes tests, the pod demo and the benchmarks, which talk to a
//! real containerd as the kubelet does; nothing hostchan ships links it.

/// `runtime.v1`.
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("runtime.v1.rs");
}
