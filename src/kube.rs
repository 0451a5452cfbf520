//! Channel annotations as a Kubernetes pod carries them: which container of the pod a channel
//! is for, and host-path templates, so that one manifest serves many pods without clashes.
//! Pure: it reads the annotations the engine copied into the container's OCI config (the hook)
//! or the pod's own, as the runtime hands them to the NRI plugin.
//!
//! CRI-O copies every pod annotation (and the kubelet's labels) into every container of the
//! pod, the sandbox included; containerd copies the ones its `pod_annotations` allows. Both say
//! what the container is:
//!
//! | what            | CRI-O                                             | containerd                          |
//! |-----------------|---------------------------------------------------|-------------------------------------|
//! | sandbox or not  | `io.kubernetes.cri-o.ContainerType`               | `io.kubernetes.cri.container-type`  |
//! | container name  | `io.kubernetes.container.name`, `...cri-o.Metadata` | `io.kubernetes.cri.container-name` |
//! | pod name        | `io.kubernetes.pod.name`                          | `io.kubernetes.cri.sandbox-name`    |
//! | pod namespace   | `io.kubernetes.pod.namespace`                     | `io.kubernetes.cri.sandbox-namespace` |
//! | pod uid         | `io.kubernetes.pod.uid`                           | `io.kubernetes.cri.sandbox-uid`     |

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{quote, Error, Result};
use crate::model::Tenant;

/// `io.hostchan.channel` holds one spec; `io.hostchan.channel.<name>` one each; either may end
/// in `/container.<container name>` to be for that container of a pod only.
pub const ANNOTATION: &str = "io.hostchan.channel";

const CONTAINER_SUFFIX: &str = "/container.";

/// A channel annotation, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAnnotation<'a> {
    pub key: &'a str,
    pub spec: &'a str,
    /// The pod container it is for; `None`: every container that gets the annotation.
    pub for_container: Option<&'a str>,
}

/// What the engine says about the container's place in a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// The pod's sandbox (pause) container: never gets channels.
    pub sandbox: bool,
    pub container: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
}

impl Pod {
    /// The pod the annotations describe. CRI-O's and containerd's keys are both read; where
    /// both name a value they must agree: the runtime writes its own keys over a pod author's,
    /// but not the other runtime's, so a disagreement is someone posing as another pod.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Pod> {
        let mut disagreement = None;
        let mut get = |keys: &[&str]| {
            let mut values = keys
                .iter()
                .filter_map(|key| annotations.get(*key).map(|value| (*key, value)))
                .filter(|(_, value)| !value.is_empty());
            let first = values.next();
            if let (Some((key, value)), Some((other_key, other))) = (first, values.next()) {
                if value != other {
                    disagreement.get_or_insert(format!(
                        "{key}={} and {other_key}={}",
                        quote(value),
                        quote(other)
                    ));
                }
            }
            first.map(|(_, value)| value.clone())
        };
        #[derive(Deserialize)]
        struct Metadata {
            name: String,
        }
        let metadata_name = annotations
            .get("io.kubernetes.cri-o.Metadata")
            .and_then(|json| serde_json::from_str::<Metadata>(json).ok())
            .map(|m| m.name);
        let pod = Pod {
            sandbox: get(&[
                "io.kubernetes.cri-o.ContainerType",
                "io.kubernetes.cri.container-type",
            ])
            .is_some_and(|kind| kind == "sandbox"),
            container: get(&[
                "io.kubernetes.container.name",
                "io.kubernetes.cri.container-name",
            ])
            .or(metadata_name),
            name: get(&["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"]),
            namespace: get(&[
                "io.kubernetes.pod.namespace",
                "io.kubernetes.cri.sandbox-namespace",
            ]),
            uid: get(&["io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"]),
        };
        if let Some(both) = disagreement {
            return Err(Error::invalid(
                "annotations",
                both,
                "disagree about the pod: the runtime wrote one of them and someone else the other; no channel is made",
            ));
        }
        if let Some(namespace) = &pod.namespace {
            if !is_namespace(namespace) {
                return Err(Error::invalid(
                    "pod namespace",
                    namespace,
                    "is not a Kubernetes namespace name",
                ));
            }
        }
        Ok(pod)
    }

    /// The pod as the runtime describes it (NRI's fields, not annotations); empty is unknown.
    pub fn of_runtime(name: &str, namespace: &str, uid: &str, container: &str) -> Result<Pod> {
        let known = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        if !namespace.is_empty() && !is_namespace(namespace) {
            return Err(Error::invalid(
                "pod namespace",
                namespace,
                "is not a Kubernetes namespace name",
            ));
        }
        Ok(Pod {
            sandbox: false,
            container: known(container),
            name: known(name),
            namespace: known(namespace),
            uid: known(uid),
        })
    }

    /// Whose subtree the pod's (or the lone container's) channels go in.
    pub fn tenant(&self, container_id: &str) -> Tenant {
        match &self.namespace {
            Some(namespace) => Tenant::Namespace(namespace.clone()),
            None => Tenant::Container(container_id.to_owned()),
        }
    }
}

fn is_namespace(text: &str) -> bool {
    is_name(text) && text != "." && text != ".."
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// hostchan's channel annotations among `annotations`. One of hostchan's own keys that is
/// malformed is an error, not ignored: the container asked for a channel it would not get.
pub fn channel_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<ChannelAnnotation<'_>>> {
    let mut found = Vec::new();
    for (key, spec) in annotations {
        let Some(rest) = key.strip_prefix(ANNOTATION) else {
            continue;
        };
        // io.hostchan.channelx: someone else's annotation.
        if !(rest.is_empty() || rest.starts_with('.') || rest.starts_with('/')) {
            continue;
        }
        let (name, for_container) = match rest.split_once(CONTAINER_SUFFIX) {
            Some((name, container)) => (name, Some(container)),
            None => (rest, None),
        };
        let name_ok = name.is_empty() || name.strip_prefix('.').is_some_and(is_name);
        let container_ok = for_container.is_none_or(is_name);
        if !name_ok || !container_ok || (for_container.is_none() && rest.contains('/')) {
            return Err(Error::invalid(
                "annotation",
                key,
                format!(
                    "must be {ANNOTATION}[.<name>][/container.<container name>], names of 1 to 63 letters, digits and _.-"
                ),
            ));
        }
        found.push(ChannelAnnotation {
            key,
            spec,
            for_container,
        });
    }
    Ok(found)
}

/// Which annotations apply to this container: none for a pod's sandbox; one that names a
/// container only to the container of that name.
pub fn for_this_container<'a>(
    annotations: Vec<ChannelAnnotation<'a>>,
    pod: &Pod,
) -> Vec<ChannelAnnotation<'a>> {
    if pod.sandbox {
        return Vec::new();
    }
    annotations
        .into_iter()
        .filter(|a| match a.for_container {
            None => true,
            Some(name) => pod.container.as_deref() == Some(name),
        })
        .collect()
}

/// The templates a host path may use, and what fills them.
const TEMPLATES: &[&str] = &["pod_uid", "pod_namespace", "pod_name", "container", "id"];

/// Fills `{pod_uid}`, `{pod_namespace}`, `{pod_name}`, `{container}` and `{id}` in the host
/// path of `spec` (the part before the first `:`). Each value must be a plain name (1 to 253
/// letters, digits, `_.-`, not `.` or `..`), so that a template never adds a path component; the result
/// is then checked as any spec is, inside the hook's roots.
pub fn expand(spec: &str, pod: &Pod, container_id: &str) -> Result<String> {
    let (host, rest) = match spec.split_once(':') {
        Some((host, rest)) => (host, Some(rest)),
        None => (spec, None),
    };
    if !host.contains(['{', '}']) {
        return Ok(spec.to_owned());
    }
    let mut expanded = String::new();
    let mut remaining = host;
    while let Some(open) = remaining.find(['{', '}']) {
        expanded.push_str(&remaining[..open]);
        let after = &remaining[open..];
        let close = after.find('}').filter(|_| after.starts_with('{'));
        let Some(close) = close else {
            return Err(Error::invalid(
                "host path",
                host,
                format!("has an unmatched brace; templates are {}", template_names()),
            ));
        };
        let name = &after[1..close];
        let value = match name {
            "pod_uid" => pod.uid.as_deref(),
            "pod_namespace" => pod.namespace.as_deref(),
            "pod_name" => pod.name.as_deref(),
            "container" => pod.container.as_deref(),
            "id" => Some(container_id),
            _ => {
                return Err(Error::invalid(
                    "host path",
                    host,
                    format!(
                        "has an unknown template {{{name}}}; templates are {}",
                        template_names()
                    ),
                ))
            }
        };
        let Some(value) = value else {
            return Err(Error::invalid(
                "host path",
                host,
                format!(
                    "uses {{{name}}}, but the engine did not say what it is for this container"
                ),
            ));
        };
        if !is_plain_value(value) {
            return Err(Error::invalid(
                "host path",
                host,
                format!(
                    "{{{name}}} would be {}, which is not a plain name",
                    quote(value)
                ),
            ));
        }
        expanded.push_str(value);
        remaining = &after[close + 1..];
    }
    expanded.push_str(remaining);
    Ok(match rest {
        Some(rest) => format!("{expanded}:{rest}"),
        None => expanded,
    })
}

/// Whether a value from the runtime may be one path component: 1 to 253 letters, digits and
/// `_.-`, not `.` or `..` (so that it never adds a component or climbs out of one).
pub fn is_plain_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `{pod_uid}, {pod_namespace}, ...`, for messages.
fn template_names() -> String {
    TEMPLATES
        .iter()
        .map(|t| format!("{{{t}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn channel_keys() {
        let annotations = map(&[
            ("io.hostchan.channel", "/run/hostchan/a:/a"),
            ("io.hostchan.channel.logs", "/run/hostchan/b:/b"),
            (
                "io.hostchan.channel.logs/container.app",
                "/run/hostchan/c:/c",
            ),
            (
                "io.hostchan.channel/container.side-car",
                "/run/hostchan/d:/d",
            ),
            ("io.hostchan.channelx", "not ours"),
            ("other", "x"),
        ]);
        let found = channel_annotations(&annotations).unwrap();
        let summary: Vec<(&str, Option<&str>)> =
            found.iter().map(|a| (a.key, a.for_container)).collect();
        assert_eq!(
            summary,
            [
                ("io.hostchan.channel", None),
                ("io.hostchan.channel.logs", None),
                ("io.hostchan.channel.logs/container.app", Some("app")),
                ("io.hostchan.channel/container.side-car", Some("side-car")),
            ]
        );
        for bad in [
            "io.hostchan.channel.",
            "io.hostchan.channel.a b",
            "io.hostchan.channel.x/container.",
            "io.hostchan.channel.x/pod.y",
            "io.hostchan.channel/container.a/b",
            "io.hostchan.channel.x\ny",
        ] {
            let err = channel_annotations(&map(&[(bad, "/x:/y")])).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    fn crio(kind: &str, name: &str) -> BTreeMap<String, String> {
        map(&[
            ("io.kubernetes.cri-o.ContainerType", kind),
            (
                "io.kubernetes.cri-o.Metadata",
                &format!(r#"{{"name":"{name}","attempt":0}}"#),
            ),
            ("io.kubernetes.pod.name", "web-1"),
            ("io.kubernetes.pod.namespace", "shop"),
            (
                "io.kubernetes.pod.uid",
                "0b7c2a9e-5d1f-4c3a-9f0e-2b6d8e4a1c7f",
            ),
        ])
    }

    #[test]
    fn pods_as_cri_o_and_containerd_describe_them() {
        let pod = Pod::of(&crio("container", "app")).unwrap();
        assert_eq!(
            pod,
            Pod {
                sandbox: false,
                container: Some("app".into()),
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("0b7c2a9e-5d1f-4c3a-9f0e-2b6d8e4a1c7f".into()),
            }
        );
        assert!(Pod::of(&crio("sandbox", "")).unwrap().sandbox);
        let containerd = map(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", "app"),
            ("io.kubernetes.cri.sandbox-name", "web-1"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-uid", "u1"),
        ]);
        let pod = Pod::of(&containerd).unwrap();
        assert_eq!(pod.container.as_deref(), Some("app"));
        assert_eq!(pod.uid.as_deref(), Some("u1"));
        let mut sandbox = containerd.clone();
        sandbox.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        assert!(Pod::of(&sandbox).unwrap().sandbox);
        assert_eq!(Pod::of(&BTreeMap::new()).unwrap(), Pod::default());
    }

    #[test]
    fn only_the_named_container_and_never_the_sandbox() {
        let annotations = map(&[
            ("io.hostchan.channel.all", "/run/hostchan/{container}:/a"),
            ("io.hostchan.channel.x/container.app", "/run/hostchan/x:/x"),
        ]);
        let keys = |pod: &Pod| -> Vec<&str> {
            for_this_container(channel_annotations(&annotations).unwrap(), pod)
                .iter()
                .map(|a| a.key)
                .collect()
        };
        let app = Pod::of(&crio("container", "app")).unwrap();
        assert_eq!(
            keys(&app),
            [
                "io.hostchan.channel.all",
                "io.hostchan.channel.x/container.app"
            ]
        );
        let other = Pod::of(&crio("container", "init-db")).unwrap();
        assert_eq!(keys(&other), ["io.hostchan.channel.all"]);
        assert!(keys(&Pod::of(&crio("sandbox", "POD")).unwrap()).is_empty());
        // Outside Kubernetes the container has no name: only unnamed annotations apply.
        assert_eq!(keys(&Pod::default()), ["io.hostchan.channel.all"]);
    }

    #[test]
    fn templates_fill_plain_names_only() {
        let pod = Pod::of(&crio("container", "app")).unwrap();
        assert_eq!(
            expand(
                "/run/hostchan/{pod_namespace}/{pod_name}/{container}:/c:rw:1M",
                &pod,
                "abc"
            )
            .unwrap(),
            "/run/hostchan/shop/web-1/app:/c:rw:1M"
        );
        assert_eq!(
            expand("/run/hostchan/{pod_uid}-{id}:/c", &pod, "abc").unwrap(),
            "/run/hostchan/0b7c2a9e-5d1f-4c3a-9f0e-2b6d8e4a1c7f-abc:/c"
        );
        // The container path is not templated.
        assert_eq!(
            expand("/run/hostchan/x:/{y}", &pod, "abc").unwrap(),
            "/run/hostchan/x:/{y}"
        );
        let cases = [
            ("/run/hostchan/{nope}:/c", &pod, "unknown template {nope}"),
            ("/run/hostchan/{pod_uid:/c", &pod, "unmatched brace"),
            ("/run/hostchan/}:/c", &pod, "unmatched brace"),
            (
                "/run/hostchan/{container}:/c",
                &Pod::default(),
                "did not say what it is",
            ),
        ];
        for (spec, pod, expected) in cases {
            let err = expand(spec, pod, "abc").unwrap_err().to_string();
            assert!(err.contains(expected), "{spec}: {err}");
        }
        // A value that would add a component (or climb) is refused.
        for evil in ["..", ".", "a/b", "", "a b"] {
            let pod = Pod {
                name: Some(evil.into()),
                ..Pod::default()
            };
            assert!(
                expand("/run/hostchan/{pod_name}/x:/c", &pod, "abc").is_err(),
                "{evil:?}"
            );
        }
    }

    /// A pod author who writes the other runtime's keys does not become another pod.
    #[test]
    fn keys_that_disagree_about_the_pod_are_refused() {
        let mut posing = crio("container", "app");
        posing.insert("io.kubernetes.cri.sandbox-namespace".into(), "bank".into());
        let refused = Pod::of(&posing).unwrap_err().to_string();
        assert!(refused.contains("disagree about the pod"), "{refused}");
        let mut agreeing = crio("container", "app");
        let namespace = agreeing["io.kubernetes.pod.namespace"].clone();
        agreeing.insert("io.kubernetes.cri.sandbox-namespace".into(), namespace);
        assert!(Pod::of(&agreeing).is_ok());
        let mut odd = BTreeMap::new();
        odd.insert("io.kubernetes.pod.namespace".to_owned(), "..".to_owned());
        assert!(Pod::of(&odd).is_err());
    }
}
