//! hostchan: host channels for containers, owned by systemd.
//!
//! Data flows one way: a spec string becomes a validated [`spec::ChannelSpec`], that becomes the
//! transient [`units`] to start, which the [`systemd`] client starts; [`channel`] composes these
//! into the lifecycle commands and keeps a [`record`] of each channel.

pub mod cdi;
pub mod channel;
pub mod cli;
pub mod config;
pub mod error;
pub mod fail_point;
pub mod hostfs;
pub mod inject;
pub mod kube;
pub mod logging;
pub mod oci;
pub mod output;
pub mod owner;
pub mod record;
pub mod spec;
pub mod systemd;
#[cfg(test)]
mod test_scratch;
pub mod unit_name;
pub mod units;
