//! The create request: one constructor, used by the CLI, the hook and the NRI plugin alike,
//! that checks the container id, takes the lifetime from the configuration when none is asked
//! for, and resolves the owner for that lifetime.

use std::path::PathBuf;

use crate::config::Config;
use crate::error::Result;
use crate::model::{AskedBy, Lifetime, Owner};
use crate::owner::AskedOwner;
use crate::spec::validate_container_id;
use crate::spec::{ChannelSpec, RootOwner};

/// What `create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Parsed once, where the request came in, against the configuration's limits.
    pub spec: ChannelSpec,
    pub owner: Owner,
    pub container: Option<String>,
    /// The pod sandbox the NRI plugin asks for the channel for.
    pub pod: Option<String>,
    pub lifetime: Lifetime,
    pub given: Given,
}

impl AsRef<CreateOptions> for CreateOptions {
    fn as_ref(&self) -> &CreateOptions {
        self
    }
}

/// The container a channel is attached in.
#[derive(Debug, Clone)]
pub struct AttachTo {
    pub pid: i32,
    /// The container's future root, inside its mount namespace, before it pivots into it.
    pub rootfs: Option<PathBuf>,
}

/// What a caller asks for, as it said it: the owner and lifetime are decided from it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub owner: AskedOwner,
    /// The container's id, as given (checked here).
    pub container: Option<String>,
    /// The pod sandbox's id, as given (checked here).
    pub pod: Option<String>,
    /// `None`: the configuration's `channels.lifetime`.
    pub lifetime: Option<Lifetime>,
    pub given: Given,
}

/// What the caller gave that the create takes as it is.
#[derive(Debug, Clone)]
pub struct Given {
    pub asked_by: AskedBy,
    /// The owner of the channel's root directory; root when `None`.
    pub root_owner: Option<RootOwner>,
    /// Also attach the channel inside this container.
    pub attach: Option<AttachTo>,
    /// Raise the owner's memory limit by the channel's size.
    pub grow_memory_limit: bool,
    pub dry_run: bool,
    /// Empty the channel when its container is started again (`io.hostchan.on-restart=clear`):
    /// a `delete`-lifetime channel at the container's next start, a `pod`-lifetime one when a
    /// container of a name it has served is created again in the pod.
    pub clear_on_restart: bool,
    /// The container's name in its pod (the NRI plugin), which a `pod`-lifetime channel records
    /// so that it knows a restart of that container from another container's first start.
    pub pod_container: Option<String>,
}

impl Given {
    /// Nothing but who asks: no attach, no memory raise, not a dry run, root's directory.
    pub fn by(asked_by: AskedBy) -> Given {
        Given {
            asked_by,
            root_owner: None,
            attach: None,
            grow_memory_limit: false,
            dry_run: false,
            clear_on_restart: false,
            pod_container: None,
        }
    }
}

impl CreateOptions {
    /// The request for `spec`, with its owner decided for its lifetime (a `delete`-lifetime
    /// channel's owner is the container's keeper).
    pub fn new(config: &Config, spec: ChannelSpec, ask: Ask) -> Result<CreateOptions> {
        let container = ask
            .container
            .as_deref()
            .map(validate_container_id)
            .transpose()?;
        let pod = ask.pod.as_deref().map(validate_container_id).transpose()?;
        let lifetime = ask.lifetime.unwrap_or(config.channels.lifetime);
        let owner = crate::owner::for_lifetime(
            lifetime,
            container.as_deref(),
            &ask.owner,
            config,
            &ask.given.asked_by,
        )?;
        Ok(CreateOptions {
            spec,
            owner,
            container,
            pod,
            lifetime,
            given: ask.given,
        })
    }

    /// The same request for another channel of the same container.
    pub fn for_spec(&self, spec: ChannelSpec) -> CreateOptions {
        CreateOptions {
            spec,
            ..self.clone()
        }
    }
}
