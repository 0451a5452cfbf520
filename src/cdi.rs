//! A CDI (Container Device Interface) spec whose one device runs hostchan as an OCI hook: the
//! way to get channels from engines without hooks.d (Docker 25+, containerd), and an alternative
//! to hooks.d for the others. `--device hostchan.io/channel=hook` plus the channel annotations
//! gives a channel in any CDI engine.

use std::path::Path;

use serde_json::{json, Value};

/// The CDI kind (`vendor/class`).
pub const KIND: &str = "hostchan.io/channel";
/// The device engines are asked for.
pub const DEVICE: &str = "hook";
/// The oldest CDI version with everything used here, so that older engines (podman 4.3)
/// accept the spec.
pub const CDI_VERSION: &str = "0.5.0";

/// The spec, with hooks running `hostchan_binary`.
pub fn spec(hostchan_binary: &Path) -> Value {
    let hook = |stage: &str| {
        json!({
            "hookName": stage,
            "path": hostchan_binary.display().to_string(),
            "args": ["hostchan", "oci-hook"],
        })
    };
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [{
            "name": DEVICE,
            // A device must edit something; the hooks are the spec's own edits below.
            "containerEdits": { "env": ["HOSTCHAN_CDI=1"] },
        }],
        "containerEdits": {
            "hooks": [hook("createRuntime"), hook("poststop")],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file the packages install is exactly what `hostchan cdi-spec` writes.
    #[test]
    fn shipped_spec_is_the_generated_one() {
        let shipped: Value =
            serde_json::from_str(include_str!("../packaging/cdi/hostchan.json")).unwrap();
        assert_eq!(shipped, spec(Path::new("/usr/bin/hostchan")));
        assert_eq!(shipped["kind"], KIND);
        assert_eq!(shipped["devices"][0]["name"], DEVICE);
    }
}
