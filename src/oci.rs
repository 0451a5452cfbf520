//! The OCI hook: the runtime's state on stdin, channels from the container's annotations.
//! `createRuntime`/`prestart` create them all (or none), `poststop` removes what is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::annotations;
use crate::channel::{AttachTo, ChannelInfo, Channels, Created};
use crate::config::Config;
use crate::error::{Context, Error, Result};
use crate::owner::AskedOwner;
use crate::spec::validate_container_id;

/// The state a runtime passes to hooks (runtime-spec, config.md).
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[clap(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Prestart,
    CreateRuntime,
    Poststop,
}

impl ContainerState {
    pub fn parse(text: &str) -> Result<ContainerState> {
        serde_json::from_str(text)
            .map_err(|e| Error::usage("the OCI state on stdin is not valid").caused_by(e))
    }

    /// The stage a hook runs in, from the container's status when the caller did not say.
    pub fn stage(&self, given: Option<Stage>) -> Result<Stage> {
        match (given, self.status.as_str()) {
            (Some(stage), _) => Ok(stage),
            (None, "creating" | "created") => Ok(Stage::CreateRuntime),
            (None, "stopped") => Ok(Stage::Poststop),
            (None, status) => Err(Error::usage(format!(
                "cannot tell the hook stage from container status {}; pass --stage",
                crate::error::quote(status)
            ))),
        }
    }

    /// The container id, checked as `create --container` checks it.
    pub fn container_id(&self) -> Result<String> {
        validate_container_id(&self.id)
    }
}

/// The container's root before pivot_root: `root.path` of the bundle's config.json, relative to
/// the bundle unless absolute.
pub fn rootfs_of_bundle(bundle: &Path) -> Result<PathBuf> {
    #[derive(Deserialize)]
    struct Config {
        root: Root,
    }
    #[derive(Deserialize)]
    struct Root {
        path: PathBuf,
    }
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| {
        Error::runtime(format!("{} has no usable root.path", path.display())).caused_by(e)
    })?;
    Ok(lexically_normal(&bundle.join(config.root.path)))
}

/// `..` and `.` resolved by the text alone: `root.path` may be `../rootfs` (relative to the
/// bundle, which the engine gives as an absolute path); joining an absolute path replaces the
/// bundle. The result is looked up later below the container's root, never on the host.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => normal.push(name),
            std::path::Component::ParentDir => {
                normal.pop();
            }
            _ => {}
        }
    }
    normal
}

/// What the hook did.
#[derive(Debug, serde::Serialize)]
pub struct HookOutcome {
    pub stage: Stage,
    pub container: String,
    pub channels: Vec<ChannelInfo>,
}

/// `load_config` is only called for the stages that create channels: a broken configuration
/// must not keep `poststop` from removing them.
/// `engine_deletes`: the hook's command line says the engine deletes containers through
/// hostchan (`--engine-deletes`), so annotations may ask for the `delete` lifetime where the
/// operator leaves that to the engine.
pub fn run_hook(
    channels: &Channels,
    load_config: &dyn Fn() -> Result<Config>,
    state: &ContainerState,
    stage: Stage,
    engine_deletes: bool,
) -> Result<HookOutcome> {
    match stage {
        Stage::Prestart | Stage::CreateRuntime => {
            create_all(channels, &load_config()?, state, stage, engine_deletes)
        }
        Stage::Poststop => {
            let container = state.container_id()?;
            Ok(HookOutcome {
                stage,
                channels: channels.container_stopped(&container)?,
                container,
            })
        }
    }
}

/// Creates every channel of the container, or none: on the first failure the ones made are
/// removed again and the failure is reported, naming the annotation.
fn create_all(
    channels: &Channels,
    config: &Config,
    state: &ContainerState,
    stage: Stage,
    engine_deletes: bool,
) -> Result<HookOutcome> {
    let pid = state.pid.ok_or_else(|| {
        Error::usage(format!(
            "the OCI state of container {} has no pid; run the hook at createRuntime or prestart",
            state.id
        ))
    })?;
    let container = state.container_id()?;
    let attach = || {
        Ok(AttachTo {
            pid,
            rootfs: Some(rootfs_of_bundle(&state.bundle)?),
        })
    };
    let Some(requests) = annotations::requests(
        config,
        &annotations::Container {
            id: &container,
            annotations: &state.annotations,
            pod: None,
            owner: AskedOwner::Pid(pid),
            root_mapping: crate::inject::root_mapping_of(pid),
            caller: annotations::Caller::Hook { engine_deletes },
            attach: Some(&attach),
        },
    )?
    else {
        return Ok(outcome(state, stage, Vec::new()));
    };
    // Channels found made already (a delete-lifetime channel attached again, a second hook)
    // are left as they were by a failure.
    let created = requests.create_all(channels, config)?;
    let channels = created
        .into_iter()
        .filter_map(Created::into_channel)
        .collect();
    Ok(outcome(state, stage, channels))
}

fn outcome(state: &ContainerState, stage: Stage, channels: Vec<ChannelInfo>) -> HookOutcome {
    HookOutcome {
        stage,
        container: state.id.clone(),
        channels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,
        "bundle":"/b","annotations":{"io.hostchan.channel":"/run/a:/a",
        "io.hostchan.channel.logs":"/run/b:/b:ro","io.hostchan.channelx":"no",
        "other":"x"}}"#;

    #[test]
    fn state_and_container_id() {
        let state = ContainerState::parse(STATE).unwrap();
        assert_eq!(state.pid, Some(42));
        let keys: Vec<&str> = crate::kube::channel_annotations(&state.annotations)
            .unwrap()
            .iter()
            .map(|a| a.key)
            .collect();
        assert_eq!(keys, ["io.hostchan.channel", "io.hostchan.channel.logs"]);
        let mut state = ContainerState::parse(STATE).unwrap();
        state.id = "c1\nWants=x.service".into();
        assert!(state.container_id().is_err());
    }

    #[test]
    fn root_paths_relative_to_the_bundle() {
        for (bundle, root, expected) in [
            ("/b/ctr", "rootfs", "/b/ctr/rootfs"),
            ("/b/ctr", "../rootfs", "/b/rootfs"),
            ("/b/ctr", "./x/../rootfs", "/b/ctr/rootfs"),
            ("/b/ctr", "/abs/rootfs", "/abs/rootfs"),
            ("/b", "../../../x", "/x"),
        ] {
            assert_eq!(
                lexically_normal(&Path::new(bundle).join(root)),
                Path::new(expected),
                "{bundle} + {root}"
            );
        }
    }

    #[test]
    fn stages() {
        let mut state = ContainerState::parse(STATE).unwrap();
        assert_eq!(state.stage(None).unwrap(), Stage::CreateRuntime);
        state.status = "stopped".into();
        assert_eq!(state.stage(None).unwrap(), Stage::Poststop);
        assert_eq!(state.stage(Some(Stage::Prestart)).unwrap(), Stage::Prestart);
        state.status = "running".into();
        assert!(state.stage(None).is_err());
        assert!(ContainerState::parse("{}").is_err());
    }
}
