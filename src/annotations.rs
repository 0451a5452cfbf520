//! The channels a container's annotations ask for, as create requests, bounded by what the
//! operator allows: the spec rules, templates and tenancy of every annotation, the lifetime
//! switch, the root owner the container's own user namespace allows, and the per-container
//! count and total size. Shared by the OCI hook and the NRI plugin; whoever creates a container
//! writes its annotations, so nothing here is taken on trust.

use std::collections::BTreeMap;

use crate::channel::{Ask, AttachTo, Channels, CreateOptions, Created, Given};
use crate::config::{Config, DeleteLifetime};
use crate::error::{Error, Kind, Result};
use crate::kube;
use crate::model::{AskedBy, Lifetime, Tenant};
use crate::owner::AskedOwner;
use crate::spec::{self, ChannelSpec, RootOwner};

/// How long the container's channels live: `stop` or `delete` for the hook (default:
/// channels.lifetime), `container` or `pod` for the NRI plugin (default: container).
pub const LIFETIME_ANNOTATION: &str = "io.hostchan.lifetime";
/// `UID:GID`: the owner of the channels' root directories (a user-namespaced container's root).
pub const ROOT_OWNER_ANNOTATION: &str = "io.hostchan.root-owner";
/// A size: the container gets a channel of that size at `/dev/shm`, in place of the runtime's
/// (see [`shm_spec`] for where it lives and whose it is).
pub const SHM_SIZE_ANNOTATION: &str = "io.hostchan.shm-size";
/// `clear` or `keep` (the default): whether the container's channels that outlive its runs (the
/// `pod` and `delete` lifetimes) start empty when it is started again.
pub const ON_RESTART_ANNOTATION: &str = "io.hostchan.on-restart";
/// The container path of the channel [`SHM_SIZE_ANNOTATION`] asks for.
const SHM: &str = "/dev/shm";

/// What the runtime, not the annotations, says about the container.
#[derive(Clone)]
pub struct Container<'a> {
    pub id: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    /// The pod as the runtime describes it (the NRI plugin); `None`: as the engine wrote it
    /// into the annotations (the hook).
    pub pod: Option<kube::Pod>,
    /// Who owns the channels: the container's process (the hook), or a unit the caller found.
    pub owner: AskedOwner,
    /// The host uid and gid the container's root is mapped to (itself when it has no user
    /// namespace); `None` when the caller cannot tell.
    pub root_mapping: Option<RootOwner>,
    pub caller: Caller,
    /// Where to attach the channels too (the hook's container before it pivots): asked only
    /// once the annotations asked for channels and passed every check.
    pub attach: Option<&'a dyn Fn() -> Result<AttachTo>>,
}

/// Who asks for the container's channels, which decides the lifetimes annotations may ask for.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The OCI hook: `stop` and `delete`. `engine_deletes`: the engine deletes containers
    /// through `hostchan delete --container` (or relies on the idle limit, as iSulad's hook
    /// file does): said by the hook's command line, which the operator wrote, never by an
    /// annotation.
    Hook { engine_deletes: bool },
    /// The NRI plugin, for a container of this pod sandbox: `container` and `pod`.
    Nri { sandbox: String },
}

/// The lifetimes a Kubernetes pod's annotations may ask for through the NRI plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KubeLifetime {
    Container,
    Pod,
}

/// The channels a container's annotations ask for, each keyed by its annotation.
#[derive(Debug)]
pub struct AnnotatedChannels(pub Vec<Annotated>);

/// One channel request and the annotation that asked for it.
#[derive(Debug)]
pub struct Annotated {
    pub annotation: String,
    pub options: CreateOptions,
}

impl AsRef<CreateOptions> for Annotated {
    fn as_ref(&self) -> &CreateOptions {
        &self.options
    }
}

impl AnnotatedChannels {
    /// Makes every channel asked for, all at once (one connection, every start job in flight
    /// together), or none: a failure takes back the ones made. Its error names the annotation.
    pub fn create_all(&self, channels: &Channels, config: &Config) -> Result<Vec<Created>> {
        self.create_all_then(channels, config, &|| {})
    }

    /// [`AnnotatedChannels::create_all`], calling `queued` once every start job is queued in PID 1.
    pub fn create_all_then(
        &self,
        channels: &Channels,
        config: &Config,
        queued: &dyn Fn(),
    ) -> Result<Vec<Created>> {
        channels
            .create_all_then(config, &self.0, queued)
            .map_err(|failed| {
                // A broken configuration is not about this annotation.
                if failed.error.kind() == Kind::Config {
                    failed.error
                } else {
                    failed
                        .error
                        .context(format!("annotation {}", self.0[failed.index].annotation))
                }
            })
    }
}

/// The annotation's value, as `create --lifetime` reads it.
fn parse_lifetime(text: &str) -> Result<Lifetime> {
    <Lifetime as clap::ValueEnum>::from_str(text, false).map_err(|_| {
        Error::invalid(
            "annotation",
            format!("{LIFETIME_ANNOTATION}={text}"),
            "the lifetime must be stop or delete (container or pod through the NRI plugin)",
        )
    })
}

fn parse_kube_lifetime(text: &str) -> Result<KubeLifetime> {
    match text {
        "container" => Ok(KubeLifetime::Container),
        "pod" => Ok(KubeLifetime::Pod),
        _ => Err(Error::invalid(
            "annotation",
            format!("{LIFETIME_ANNOTATION}={text}"),
            "on Kubernetes the lifetime must be container or pod",
        )),
    }
}

/// The container's channel requests; `None` when its annotations ask for none (a pod's
/// sandbox, a container not named by any channel annotation, no annotations at all).
pub fn requests(config: &Config, container: &Container<'_>) -> Result<Option<AnnotatedChannels>> {
    let asked = kube::channel_annotations(container.annotations)?;
    if asked.is_empty() && !container.annotations.contains_key(SHM_SIZE_ANNOTATION) {
        return Ok(None);
    }
    let pod = match &container.pod {
        Some(pod) => pod.clone(),
        None => kube::Pod::of(container.annotations)?,
    };
    let annotations = kube::for_this_container(asked, &pod);
    let for_pod = matches!(container.caller, Caller::Nri { .. });
    let shm = shm_spec(config, container.annotations, &pod, container.id, for_pod)?;
    if annotations.is_empty() && shm.is_none() {
        return Ok(None);
    }
    let asked_lifetime = container
        .annotations
        .get(LIFETIME_ANNOTATION)
        .map(String::as_str);
    // Whose the channels are: the container's, or (pod lifetime) the pod's.
    let (lifetime, owning_container, owning_pod) = match &container.caller {
        Caller::Hook { engine_deletes } => {
            // Decided here, whatever it comes from, so that the configuration's default passes
            // the operator's switch as an annotation does.
            let lifetime = match asked_lifetime {
                Some(text) => parse_lifetime(text)?,
                None => config.channels.lifetime,
            };
            if lifetime == Lifetime::Delete {
                check_delete_lifetime(config, *engine_deletes, asked_lifetime.is_none())?;
            }
            (Some(lifetime), Some(container.id.to_owned()), None)
        }
        Caller::Nri { sandbox } => {
            let lifetime = asked_lifetime.map(parse_kube_lifetime).transpose()?;
            match lifetime.unwrap_or(KubeLifetime::Container) {
                KubeLifetime::Container => (
                    Some(Lifetime::Container),
                    Some(container.id.to_owned()),
                    Some(sandbox.clone()),
                ),
                KubeLifetime::Pod => (Some(Lifetime::Pod), None, Some(sandbox.clone())),
            }
        }
    };
    let root_owner = container
        .annotations
        .get(ROOT_OWNER_ANNOTATION)
        .map(|text| {
            let asked = spec::parse_root_owner(text)?;
            check_root_owner(asked, container.root_mapping)?;
            Ok(asked)
        })
        .transpose()
        .map_err(|e: Error| e.context(format!("annotation {ROOT_OWNER_ANNOTATION}")))?;
    // The count first, so that a container asking for 100,000 channels is refused before one
    // of them is parsed.
    check_channel_count(
        config,
        container.id,
        annotations.len() + usize::from(shm.is_some()),
    )?;
    // Every annotation is checked before anything is looked up on the machine (the owner).
    let asked_by = AskedBy::Annotations(pod.tenant(container.id));
    let clear_on_restart = match container
        .annotations
        .get(ON_RESTART_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("keep") => false,
        Some("clear") => true,
        Some(other) => {
            return Err(Error::invalid(
                "annotation",
                format!("{ON_RESTART_ANNOTATION}={other}"),
                "must be clear or keep",
            ))
        }
    };
    let parsed = parse_specs(config, &annotations, &pod, container.id)?;
    let mut specs: Vec<ChannelSpec> = parsed.iter().map(|one| one.spec.clone()).collect();
    specs.extend(shm.clone());
    check_shm_once(&parsed, shm.is_some())?;
    check_container_bounds(config, container.id, &specs)?;
    let attach = container.attach.map(|attach| attach()).transpose()?;
    let ask = Ask {
        owner: container.owner.clone(),
        container: owning_container,
        pod: owning_pod,
        lifetime,
        given: Given {
            root_owner,
            attach,
            clear_on_restart,
            pod_container: match container.caller {
                Caller::Nri { .. } => pod.container.clone(),
                Caller::Hook { .. } => None,
            },
            ..Given::by(asked_by)
        },
    };
    // Through the plugin, /dev/shm is the pod's, whatever the lifetime of the other channels.
    let shm_ask = match &container.caller {
        Caller::Nri { sandbox } => Ask {
            container: None,
            pod: Some(sandbox.clone()),
            lifetime: Some(Lifetime::Pod),
            ..ask.clone()
        },
        Caller::Hook { .. } => ask.clone(),
    };
    let mut requests = Vec::new();
    let mut parsed = parsed.into_iter();
    if let Some(first) = parsed.next() {
        // The owner is resolved once, for the first; the others share it.
        let base = CreateOptions::new(config, first.spec, ask)?;
        requests.push(Annotated {
            annotation: first.key,
            options: base.clone(),
        });
        requests.extend(parsed.map(|one| Annotated {
            annotation: one.key,
            options: base.for_spec(one.spec),
        }));
    }
    if let Some(shm) = shm {
        requests.push(Annotated {
            annotation: SHM_SIZE_ANNOTATION.to_owned(),
            options: CreateOptions::new(config, shm, shm_ask)?,
        });
    }
    Ok(Some(AnnotatedChannels(requests)))
}

/// The `/dev/shm` channel [`SHM_SIZE_ANNOTATION`] asks for, if it does; `None` for a pod's
/// sandbox. It lies in the tenant's subtree of the first of `hook.allowed_roots`, so that a host
/// daemon finds it by name:
/// - for the NRI plugin (`for_pod`), one for the whole pod, shared by its containers and gone
///   with the pod: `<root>/<namespace>/<pod uid>/shm`;
/// - for the hook, one per container, with the container's lifetime:
///   `<root>/<namespace>/<container id>/shm`, or `<root>/<container id>/shm` outside a pod.
///
/// Its size is bounded as any channel's.
fn shm_spec(
    config: &Config,
    annotations: &BTreeMap<String, String>,
    pod: &kube::Pod,
    container_id: &str,
    for_pod: bool,
) -> Result<Option<ChannelSpec>> {
    let Some(size) = annotations.get(SHM_SIZE_ANNOTATION) else {
        return Ok(None);
    };
    if pod.sandbox {
        return Ok(None);
    }
    let in_annotation = |e: Error| e.context(format!("annotation {SHM_SIZE_ANNOTATION}"));
    // Checked alone first: a size with a ':' in it is a bad size, not a spec with more fields.
    spec::parse_size(size).map_err(in_annotation)?;
    let Some(root) = config.hook.allowed_roots.first() else {
        return Err(Error::config(format!(
            "hook.allowed_roots in {} is empty: a /dev/shm channel has nowhere to go",
            config.origin()
        )));
    };
    let tenant = pod.tenant(container_id);
    let mut host = root.join(tenant.subtree_name());
    let holder = if for_pod {
        match (&pod.namespace, &pod.uid) {
            (Some(_), Some(uid)) => Some(uid.as_str()),
            _ => {
                return Err(in_annotation(Error::invalid(
                    "pod",
                    container_id,
                    "the runtime did not say the pod's namespace and uid, which name its /dev/shm channel",
                )))
            }
        }
    } else {
        matches!(tenant, Tenant::Namespace(_)).then_some(container_id)
    };
    if let Some(holder) = holder {
        if !kube::is_plain_value(holder) {
            return Err(in_annotation(Error::invalid(
                "name",
                holder,
                "cannot name a directory of the /dev/shm channel: only letters, digits and _.- may",
            )));
        }
        host.push(holder);
    }
    host.push("shm");
    let text = format!("{}:{SHM}:rw:{size}", host.display());
    ChannelSpec::parse(&text, &config.limits())
        .map(Some)
        .map_err(in_annotation)
}

/// A container gets one `/dev/shm`: a channel annotation for it and the size annotation would
/// mount two channels there.
fn check_shm_once(parsed: &[Parsed], shm_asked: bool) -> Result<()> {
    match parsed
        .iter()
        .find(|one| one.spec.container_path == std::path::Path::new(SHM))
    {
        Some(one) if shm_asked => Err(Error::invalid(
            "annotation",
            &one.key,
            format!("also asks for {SHM}, which {SHM_SIZE_ANNOTATION} gives; keep one of them"),
        )),
        _ => Ok(()),
    }
}

/// One channel annotation, expanded and parsed.
struct Parsed {
    key: String,
    spec: ChannelSpec,
}

fn parse_specs(
    config: &Config,
    annotations: &[kube::ChannelAnnotation<'_>],
    pod: &kube::Pod,
    container_id: &str,
) -> Result<Vec<Parsed>> {
    annotations
        .iter()
        .map(|annotation| {
            let in_annotation = |e: Error| e.context(format!("annotation {}", annotation.key));
            spec::check_spec_length("spec", annotation.spec).map_err(in_annotation)?;
            let text = kube::expand(annotation.spec, pod, container_id).map_err(in_annotation)?;
            let spec = ChannelSpec::parse(&text, &config.limits()).map_err(in_annotation)?;
            Ok(Parsed {
                key: annotation.key.to_owned(),
                spec,
            })
        })
        .collect()
}

/// The channels a pod container's annotations ask for, parsed as its create parses them and
/// without looking anything up on the machine: to check what a running container has.
pub fn asked_channels(
    config: &Config,
    annotations: &BTreeMap<String, String>,
    pod: &kube::Pod,
    container_id: &str,
) -> Result<Vec<ChannelSpec>> {
    let asked = kube::for_this_container(kube::channel_annotations(annotations)?, pod);
    let shm = shm_spec(config, annotations, pod, container_id, true)?;
    check_channel_count(
        config,
        container_id,
        asked.len() + usize::from(shm.is_some()),
    )?;
    let mut specs: Vec<ChannelSpec> = parse_specs(config, &asked, pod, container_id)?
        .into_iter()
        .map(|one| one.spec)
        .collect();
    specs.extend(shm);
    Ok(specs)
}

/// Whether a hook's channels may outlive the container's stops: only where the operator allows
/// it, by default only where the engine deletes its containers through hostchan. The same
/// switch holds whether an annotation asked for `delete` or the configuration's
/// `channels.lifetime` made it the default (`from_default`).
fn check_delete_lifetime(config: &Config, engine_deletes: bool, from_default: bool) -> Result<()> {
    let allowed = match config.hook.delete_lifetime {
        DeleteLifetime::Engine => engine_deletes,
        DeleteLifetime::Allow => true,
        DeleteLifetime::Refuse => false,
    };
    if allowed {
        return Ok(());
    }
    let why = format!(
        "this engine's hook does not say it deletes containers through hostchan (oci-hook --engine-deletes), and hook.delete_lifetime in {} is {}",
        config.origin(),
        config.hook.delete_lifetime
    );
    if from_default {
        return Err(Error::invalid(
            "lifetime",
            "delete",
            format!(
                "is channels.lifetime in {}, which this hook may not give: {why}; annotate {LIFETIME_ANNOTATION}=stop",
                config.origin()
            ),
        ));
    }
    Err(Error::invalid(
        "annotation",
        format!("{LIFETIME_ANNOTATION}=delete"),
        format!("is not allowed here: {why}"),
    ))
}

/// A root owner asked for by annotation must be the container's own root as its user namespace
/// maps it: anything else would hand the channel to some other user of the host.
fn check_root_owner(asked: RootOwner, mapping: Option<RootOwner>) -> Result<()> {
    match mapping {
        Some(root) if root == asked => Ok(()),
        Some(root) => Err(Error::invalid(
            "root owner",
            asked.to_string(),
            format!("is not the container's root, which its user namespace maps to {root}"),
        )),
        None => Err(Error::invalid(
            "root owner",
            asked.to_string(),
            "cannot be checked against the container's user namespace here",
        )),
    }
}

/// The operator's bound on how many channels one container's annotations may ask for.
fn check_channel_count(config: &Config, container: &str, count: usize) -> Result<()> {
    let most = config.hook.max_channels_per_container;
    if count <= most {
        return Ok(());
    }
    Err(Error::invalid(
        "annotations",
        format!("{count} channels"),
        format!(
            "container {container} asks for more than hook.max_channels_per_container ({most}) in {}",
            config.origin()
        ),
    ))
}

/// The operator's bound on one container's channels' total size.
fn check_container_bounds(config: &Config, container: &str, specs: &[ChannelSpec]) -> Result<()> {
    let total: u64 = specs.iter().map(|s| s.size).fold(0, u64::saturating_add);
    let limit = config.max_total_size_per_container();
    if total > limit {
        return Err(Error::invalid(
            "annotations",
            format!("{} in all", spec::format_size(total)),
            format!(
                "container {container}'s channels come to {total} bytes, above hook.max_total_size ({limit} bytes on this machine) in {}",
                config.origin()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Machine;

    fn config(text: &str) -> Config {
        let machine = Machine {
            mem_total: 16 << 30,
            page_size: 4096,
        };
        Config::parse(text, Path::new("/etc/hostchan/config.toml"), &machine).unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn container<'a>(annotations: &'a BTreeMap<String, String>) -> Container<'a> {
        Container {
            id: "c1",
            annotations,
            pod: None,
            owner: AskedOwner::Unbound,
            root_mapping: Some(RootOwner { uid: 0, gid: 0 }),
            caller: Caller::Hook {
                engine_deletes: false,
            },
            attach: None,
        }
    }

    fn refusal(config: &Config, container: &Container<'_>) -> String {
        requests(config, container).unwrap_err().to_string()
    }

    #[test]
    fn lifetimes_from_the_annotation() {
        assert_eq!(parse_lifetime("stop").unwrap(), Lifetime::Stop);
        assert_eq!(parse_lifetime("delete").unwrap(), Lifetime::Delete);
        for bad in ["", "Delete", "forever"] {
            assert_eq!(parse_lifetime(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_delete_lifetime_is_the_operators() {
        let asked = annotations(&[
            ("io.hostchan.channel", "/run/hostchan/c1/a:/a"),
            (LIFETIME_ANNOTATION, "delete"),
        ]);
        let builtin = config("");
        let mut plain = container(&asked);
        plain.owner = AskedOwner::Default;
        let refused = refusal(&builtin, &plain);
        assert!(
            refused.contains("io.hostchan.lifetime=delete\": is not allowed here"),
            "{refused}"
        );
        let mut engine = plain.clone();
        engine.caller = Caller::Hook {
            engine_deletes: true,
        };
        let made = requests(&builtin, &engine).unwrap().unwrap();
        assert_eq!(made.0[0].options.lifetime, Lifetime::Delete);
        assert!(requests(&config("[hook]\ndelete_lifetime = \"allow\"\n"), &plain).is_ok());
        let never = config("[hook]\ndelete_lifetime = \"refuse\"\n");
        assert!(requests(&never, &engine).is_err());
    }

    /// The operator's switch holds for the lifetime a hook's channel gets, whatever it comes
    /// from (an annotation, or the configuration's default), for every caller: the hook with and
    /// without --engine-deletes, CDI (the shipped spec runs the plain hook), NRI, and the CLI
    /// (root's own command line, which the switch does not bound).
    #[test]
    fn the_lifetime_switch_holds_whatever_asks_for_the_lifetime() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum By {
            HookEngineDeletes,
            Hook,
            Cdi,
            Nri,
            Cli,
        }
        let sources: &[(Option<&str>, Lifetime)] = &[
            (Some("delete"), Lifetime::Stop),
            (Some("delete"), Lifetime::Delete),
            (Some("stop"), Lifetime::Delete),
            (None, Lifetime::Delete),
            (None, Lifetime::Stop),
        ];
        for (asked, default) in sources {
            for switch in ["engine", "allow", "refuse"] {
                for by in [By::HookEngineDeletes, By::Hook, By::Cdi, By::Nri, By::Cli] {
                    let config = config(&format!(
                        "[channels]\nlifetime = \"{default}\"\n[owner]\ndefault = \"unbound\"\n[hook]\ndelete_lifetime = \"{switch}\"\n"
                    ));
                    let mut pairs = vec![("io.hostchan.channel", "/run/hostchan/c1/a:/a")];
                    if let Some(asked) = asked {
                        pairs.push((LIFETIME_ANNOTATION, asked));
                    }
                    let asked_for = annotations(&pairs);
                    let wanted = asked
                        .map(|a| parse_lifetime(a).unwrap())
                        .unwrap_or(*default);
                    let case = format!("{by:?}, {asked:?}, default {default}, switch {switch}");
                    let got: Result<Lifetime> = match by {
                        By::Cli => {
                            let ask = Ask {
                                owner: AskedOwner::Default,
                                container: Some("c1".into()),
                                pod: None,
                                lifetime: asked.map(|a| parse_lifetime(a).unwrap()),
                                given: Given::by(AskedBy::Cli),
                            };
                            let spec =
                                ChannelSpec::parse("/run/hostchan/x:/x", &config.limits()).unwrap();
                            CreateOptions::new(&config, spec, ask).map(|o| o.lifetime)
                        }
                        _ => {
                            let mut asking = container(&asked_for);
                            asking.owner = AskedOwner::Default;
                            asking.caller = match by {
                                By::HookEngineDeletes => Caller::Hook {
                                    engine_deletes: true,
                                },
                                By::Nri => Caller::Nri {
                                    sandbox: "sandbox1".into(),
                                },
                                _ => Caller::Hook {
                                    engine_deletes: false,
                                },
                            };
                            requests(&config, &asking)
                                .map(|made| made.unwrap().0[0].options.lifetime)
                        }
                    };
                    let allowed_delete = matches!(
                        (by, switch),
                        (By::Cli, _) | (_, "allow") | (By::HookEngineDeletes, "engine")
                    );
                    match by {
                        // Kubernetes knows container and pod lifetimes only; the default is
                        // the container's, bound to its stop.
                        By::Nri if asked.is_some() => assert!(got.is_err(), "{case}: {got:?}"),
                        By::Nri => assert_eq!(got.unwrap(), Lifetime::Container, "{case}"),
                        _ if wanted == Lifetime::Delete && !allowed_delete => {
                            let err = got.expect_err(&case);
                            assert_eq!(err.exit_code(), 2, "{case}: {err}");
                            let named = if asked.is_some() {
                                "io.hostchan.lifetime=delete\": is not allowed here"
                            } else {
                                "invalid lifetime \"delete\": is channels.lifetime in"
                            };
                            assert!(err.to_string().contains(named), "{case}: {err}");
                        }
                        _ => assert_eq!(got.unwrap(), wanted, "{case}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_root_owner_must_be_the_containers_own_root() {
        let asked = annotations(&[
            ("io.hostchan.channel", "/run/hostchan/c1/a:/a"),
            (ROOT_OWNER_ANNOTATION, "1000:1000"),
        ]);
        let builtin = config("");
        let refused = refusal(&builtin, &container(&asked));
        assert!(
            refused.contains("is not the container's root, which its user namespace maps to 0:0"),
            "{refused}"
        );
        let mut mapped = container(&asked);
        mapped.root_mapping = Some(RootOwner {
            uid: 1000,
            gid: 1000,
        });
        assert!(requests(&builtin, &mapped).is_ok());
        mapped.root_mapping = None;
        assert!(requests(&builtin, &mapped).is_err());
    }

    #[test]
    fn a_container_is_bounded_in_count_and_total_size() {
        let many: Vec<(String, String)> = (0..17)
            .map(|i| {
                (
                    format!("io.hostchan.channel.c{i}"),
                    format!("/run/hostchan/c1/c{i}:/c{i}:rw:1M"),
                )
            })
            .collect();
        let many: BTreeMap<String, String> = many.into_iter().collect();
        let builtin = config("");
        let refused = refusal(&builtin, &container(&many));
        assert!(
            refused.contains("asks for more than hook.max_channels_per_container (16)"),
            "{refused}"
        );
        // Two channels of half the RAM each: the total passes half of it.
        let big = annotations(&[
            ("io.hostchan.channel.a", "/run/hostchan/c1/a:/a:rw:8G"),
            ("io.hostchan.channel.b", "/run/hostchan/c1/b:/b:rw:8G"),
        ]);
        let refused = refusal(&builtin, &container(&big));
        assert!(refused.contains("above hook.max_total_size"), "{refused}");
        let raised = config("[hook]\nmax_channels_per_container = 20\nmax_total_size = \"50%\"\n");
        assert!(requests(&raised, &container(&many)).is_ok());
        let small = config("[hook]\nmax_total_size = \"1M\"\n");
        let two = annotations(&[
            ("io.hostchan.channel.a", "/run/hostchan/c1/a:/a:rw:1M"),
            ("io.hostchan.channel.b", "/run/hostchan/c1/b:/b:rw:4k"),
        ]);
        assert!(requests(&small, &container(&two)).is_err());
    }

    fn pod_container<'a>(annotations: &'a BTreeMap<String, String>) -> Container<'a> {
        Container {
            id: "c1",
            annotations,
            pod: Some(kube::Pod::of_runtime("web", "shop", "u-1", "app").unwrap()),
            owner: AskedOwner::Unit("cri-containerd-pod1.scope".into()),
            root_mapping: None,
            caller: Caller::Nri {
                sandbox: "pod1".into(),
            },
            attach: None,
        }
    }

    #[test]
    fn shm_size_gives_the_pod_one_dev_shm_channel() {
        let asked = annotations(&[
            (SHM_SIZE_ANNOTATION, "2G"),
            (
                "io.hostchan.channel",
                "/run/hostchan/shop/{pod_uid}/a:/a:rw:1M",
            ),
        ]);
        let made = requests(&config(""), &pod_container(&asked))
            .unwrap()
            .unwrap();
        let shm = &made.0[1];
        assert_eq!(shm.annotation, SHM_SIZE_ANNOTATION);
        let options = &shm.options;
        assert_eq!(
            options.spec.host_path,
            Path::new("/run/hostchan/shop/u-1/shm")
        );
        assert_eq!(options.spec.container_path, Path::new("/dev/shm"));
        assert_eq!(options.spec.size, 2 << 30);
        assert_eq!(options.spec.access, spec::Access::Rw);
        // The pod's, whatever the other channels' lifetime (here the container's).
        assert_eq!(options.lifetime, Lifetime::Pod);
        assert_eq!(options.container, None);
        assert_eq!(options.pod.as_deref(), Some("pod1"));
        assert_eq!(made.0[0].options.lifetime, Lifetime::Container);

        // Alone, too.
        let alone = annotations(&[(SHM_SIZE_ANNOTATION, "64M")]);
        let made = requests(&config(""), &pod_container(&alone))
            .unwrap()
            .unwrap();
        assert_eq!(made.0.len(), 1);
        assert_eq!(made.0[0].options.spec.size, 64 << 20);
        let specs = asked_channels(
            &config(""),
            &alone,
            &kube::Pod::of_runtime("web", "shop", "u-1", "app").unwrap(),
            "c1",
        )
        .unwrap();
        assert_eq!(specs, vec![made.0[0].options.spec.clone()]);
    }

    #[test]
    fn shm_size_through_the_hook_is_the_containers() {
        let asked = annotations(&[(SHM_SIZE_ANNOTATION, "16M")]);
        let made = requests(&config(""), &container(&asked)).unwrap().unwrap();
        let options = &made.0[0].options;
        assert_eq!(options.spec.host_path, Path::new("/run/hostchan/c1/shm"));
        assert_eq!(options.lifetime, Lifetime::Stop);
        assert_eq!(options.container.as_deref(), Some("c1"));
        // In a pod (CRI-O's annotations): the namespace's subtree, one per container.
        let in_pod = annotations(&[
            (SHM_SIZE_ANNOTATION, "16M"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.name", "web"),
        ]);
        let made = requests(&config(""), &container(&in_pod)).unwrap().unwrap();
        assert_eq!(
            made.0[0].options.spec.host_path,
            Path::new("/run/hostchan/shop/c1/shm")
        );
        // Not the sandbox's.
        let sandbox = annotations(&[
            (SHM_SIZE_ANNOTATION, "16M"),
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
        ]);
        assert!(requests(&config(""), &container(&sandbox))
            .unwrap()
            .is_none());
    }

    #[test]
    fn shm_size_is_bounded_and_checked_like_any_channel() {
        let refused = |pairs: &[(&str, &str)], config_text: &str| {
            let asked = annotations(pairs);
            requests(&config(config_text), &pod_container(&asked))
                .unwrap_err()
                .to_string()
        };
        let text = refused(&[(SHM_SIZE_ANNOTATION, "9G")], "");
        assert!(
            text.contains(SHM_SIZE_ANNOTATION) && text.contains("9G"),
            "{text}"
        );
        let text = refused(&[(SHM_SIZE_ANNOTATION, "1G:/x")], "");
        assert!(text.contains("size"), "{text}");
        let text = refused(
            &[(SHM_SIZE_ANNOTATION, "2M")],
            "[channels]\nmax_size = \"1M\"\n",
        );
        assert!(text.contains(SHM_SIZE_ANNOTATION), "{text}");
        let text = refused(
            &[
                (SHM_SIZE_ANNOTATION, "2M"),
                (
                    "io.hostchan.channel.mine",
                    "/run/hostchan/shop/x:/dev/shm:rw:1M",
                ),
            ],
            "",
        );
        assert!(
            text.contains("io.hostchan.channel.mine") && text.contains("keep one"),
            "{text}"
        );
        let text = refused(
            &[
                (SHM_SIZE_ANNOTATION, "2M"),
                ("io.hostchan.channel", "/run/hostchan/shop/x:/x:rw:1M"),
            ],
            "[hook]\nmax_channels_per_container = 1\n",
        );
        assert!(text.contains("max_channels_per_container"), "{text}");
        // A pod uid that would climb out of the subtree names nothing.
        let asked = annotations(&[(SHM_SIZE_ANNOTATION, "2M")]);
        let mut odd = pod_container(&asked);
        odd.pod = Some(kube::Pod::of_runtime("web", "shop", "..", "app").unwrap());
        let text = requests(&config(""), &odd).unwrap_err().to_string();
        assert!(text.contains("cannot name a directory"), "{text}");
        odd.pod = Some(kube::Pod::of_runtime("web", "", "u-1", "app").unwrap());
        assert!(requests(&config(""), &odd).is_err());
    }

    #[test]
    fn on_restart_is_clear_or_keep() {
        let ask = |value: &str| {
            let asked = annotations(&[
                ("io.hostchan.channel", "/run/hostchan/shop/a:/a:rw:1M"),
                (LIFETIME_ANNOTATION, "pod"),
                (ON_RESTART_ANNOTATION, value),
            ]);
            requests(&config(""), &pod_container(&asked)).map(|made| {
                let given = &made.unwrap().0[0].options.given;
                (given.clear_on_restart, given.pod_container.clone())
            })
        };
        assert_eq!(ask("clear").unwrap(), (true, Some("app".into())));
        assert_eq!(ask("keep").unwrap(), (false, Some("app".into())));
        let refused = ask("wipe").unwrap_err();
        assert_eq!(refused.exit_code(), 2);
        assert!(
            refused.to_string().contains("io.hostchan.on-restart=wipe"),
            "{refused}"
        );
    }
}
