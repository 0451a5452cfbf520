//! hostchan: host channels for containers, owned by systemd.
//!
//! Data flows one way: argv ([`cli`]), a container's annotations ([`oci`], [`kube`]) or a pod's
//! through the NRI plugin ([`nri`], [`annotations`]) become a
//! validated request ([`spec`], [`config`], [`owner`]), that becomes the transient units to
//! start ([`units`], [`unit_name`]), which the systemd client starts ([`systemd`]); the lifecycle
//! ([`channel`]) composes these, keeps a [`record`] of each channel, and attaches it inside a
//! container ([`inject`]). The types every layer speaks are in [`model`].
//!
//! The binary is [`commands::main`] over a parsed [`cli::Cli`]; everything else is private to the
//! crate, so that the compiler reports code nothing uses.

mod annotations;
mod cdi;
mod channel;
pub mod cli;
pub mod commands;
mod config;
mod error;
mod fail_point;
mod hostfs;
mod inject;
mod kube;
mod logging;
mod memory;
mod metrics;
mod model;
mod nri;
mod oci;
mod output;
mod owner;
mod record;
mod spec;
mod systemd;
#[cfg(test)]
mod test_scratch;
mod unit_name;
mod units;

/// For the integration tests: the names and paths they check hostchan's against.
pub use config::DEFAULT_PATH as DEFAULT_CONFIG_PATH;
pub use spec::normalize_absolute;
pub use unit_name::mount_unit_name;
