//! What a create does about a record it finds at its unit name: a live channel is reused or
//! refused; one another hostchan is making right now is refused; one whose creator died half
//! way, or whose units are gone, is taken away so that the create goes on. A killed create
//! never blocks the next one.

use super::teardown::OnError;
use super::Channels;
use crate::error::{Error, Result};
use crate::hostfs;
use crate::record::{Creator, Record};

/// Where the channel of a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Its units (or a job for them) are in systemd, or something is mounted at its path.
    Live,
    /// Another hostchan is creating it now.
    BeingMade,
    /// What is left of a channel that will never be up: a create takes it away.
    Left(Left),
}

/// A channel that will never be up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Left {
    /// Its creator died before it was up (its lock is there, and nobody holds it), and every
    /// call it sent has reached systemd.
    HalfMade,
    /// Its units are gone and nothing is mounted at its path: what a crash or a reboot left.
    Gone,
}

impl Left {
    fn why(self) -> &'static str {
        match self {
            Left::HalfMade => "its creator died before it was up",
            Left::Gone => "its units are gone",
        }
    }
}

impl Channels {
    pub(super) fn standing(&self, record: &Record) -> Result<Standing> {
        match self.store.creator(&record.channel.id)? {
            Creator::Working => return Ok(Standing::BeingMade),
            Creator::Died { bus_name } => {
                // Its start of the units may still be on its way to systemd: were it to arrive
                // after the stop, systemd would mount the channel after its record went.
                if let Some(name) = bus_name {
                    if !self
                        .systemd()?
                        .wait_until_gone(&name, CREATOR_GONE_WITHIN)?
                    {
                        return Ok(Standing::BeingMade);
                    }
                }
                return Ok(Standing::Left(Left::HalfMade));
            }
            Creator::Done => {}
        }
        if hostfs::is_mount_point(record.host_path())? {
            return Ok(Standing::Live);
        }
        let names: Vec<&str> = record.channel.units().collect();
        let live = self
            .systemd()?
            .unit_states(&names)?
            .values()
            // A stopped unit systemd has yet to unload is gone: a create at the path then
            // waits for it to be unloaded before it starts its own.
            .any(|status| status.is_live());
        Ok(if live {
            Standing::Live
        } else {
            Standing::Left(Left::Gone)
        })
    }

    /// Takes away what is left of a channel, so that a create can make it anew.
    pub(super) fn clear_away(&self, record: &Record, left: Left) -> Result<()> {
        let cleared = match left {
            Left::HalfMade => self
                .tear_down_half_made(record)
                .and_then(|()| self.store.forget_creator(&record.channel.id)),
            Left::Gone => self.remove_leftovers(record).map(drop),
        };
        cleared.map_err(|e| {
            e.context(format!(
                "host path {} holds what is left of channel {} ({})",
                record.host_path().display(),
                record.channel.id,
                left.why()
            ))
        })?;
        tracing::info!(
            OBJECT_SYSTEMD_UNIT = %record.unit(),
            "took away channel {} at {}: {}",
            record.channel.id,
            record.host_path().display(),
            left.why()
        );
        Ok(())
    }
}

impl Channels {
    /// The dead creator may have left the mount's start job running: a stop that meets the
    /// mount being mounted can fail, and the next one finds it mounted and unmounts it.
    fn tear_down_half_made(&self, record: &Record) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.tear_down(self.systemd()?, &[record], OnError::Stop) {
                Err(e) if attempt < STOP_ATTEMPTS => {
                    tracing::debug!(
                        "taking down half-made channel {}: {e}; again",
                        record.unit()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// How long a dead creator's bus connection may take to close.
pub(super) const CREATOR_GONE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a half-made channel's units are asked to stop.
const STOP_ATTEMPTS: u32 = 3;

/// The refusal for a channel another hostchan is creating now.
pub(super) fn being_made(record: &Record) -> Error {
    Error::already_exists(format!(
        "host path {} is being made a channel ({}) by another hostchan right now; try again once it is done",
        record.host_path().display(),
        record.unit()
    ))
}
