//! What systemd says about units: their states (`ListUnitsByNames`), an owner's state, cgroup
//! and memory in one call, a mount's `Where=`, the channel mounts on their way out, and a unit's
//! object path.

use std::collections::HashMap;

use serde::Deserialize;
use zbus::zvariant::{OwnedObjectPath, Type};

use super::{waited, Systemd};
use crate::error::{Error, Kind, Result};

/// What hostchan keeps of a row of `ListUnitsByNames`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub job_id: u32,
    pub job_type: String,
}

/// One row of `ListUnitsByNames`, `(ssssssouso)`, borrowed from the reply: `list` asks for
/// every channel at once, and copying the fields it does not show cost it a copy and an
/// allocation each.
#[derive(Deserialize, Type)]
struct UnitRow<'a> {
    name: &'a str,
    description: &'a str,
    load_state: &'a str,
    active_state: &'a str,
    sub_state: &'a str,
    _followed: &'a str,
    _path: zbus::zvariant::ObjectPath<'a>,
    job_id: u32,
    job_type: &'a str,
    _job_path: zbus::zvariant::ObjectPath<'a>,
}

impl UnitStatus {
    /// Loaded in any form (a unit that is not loaded does not exist for systemd).
    pub fn exists(&self) -> bool {
        self.load_state != "not-found" && self.load_state != "stub"
    }

    /// Loaded and active: a unit that runs.
    pub fn is_active(&self) -> bool {
        self.exists() && self.active_state == "active"
    }

    /// What keeps a channel alive: a unit that is loaded and not [over](Self::is_over), or one
    /// with a job queued.
    pub fn is_live(&self) -> bool {
        (self.exists() && !self.is_over()) || self.job_id != 0
    }

    /// Stopped (or failed) with no job to start it again: what systemd has yet to collect.
    /// A stopped transient unit stays loaded until PID 1's next pass over what it can unload;
    /// a stop job's end is announced before that.
    pub fn is_over(&self) -> bool {
        self.exists()
            && self.job_id == 0
            && (self.active_state == "inactive" || self.active_state == "failed")
    }
}

/// What is asked of a channel's owner before the channel is bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    /// Its state; `job_type` is left empty (only `job_id` comes with the properties).
    pub status: UnitStatus,
    /// Its cgroup path (`/machine.slice/libpod-x.scope`); empty while it has none.
    pub control_group: String,
    pub memory: Memory,
}

/// Memory figures of a unit's cgroup, in bytes; `u64::MAX` means none or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemoryMax=` (cgroup v2 semantics; systemd also applies it on v1).
    pub max: u64,
    /// `MemoryLimit=`, the cgroup v1 setting some runtimes still use.
    pub limit: u64,
    pub current: u64,
}

impl Systemd {
    /// States of the named units in one call; units systemd does not know come back with the
    /// load state `not-found`.
    pub fn unit_states(&self, names: &[&str]) -> Result<HashMap<String, UnitStatus>> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let reply = waited(|| {
            self.manager
                .inner()
                .call_method("ListUnitsByNames", &(names,))
        })?;
        let body = reply.body();
        let rows: Vec<UnitRow<'_>> = body.deserialize()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let status = UnitStatus {
                    name: row.name.to_owned(),
                    load_state: row.load_state.to_owned(),
                    active_state: row.active_state.to_owned(),
                    sub_state: row.sub_state.to_owned(),
                    job_id: row.job_id,
                    job_type: row.job_type.to_owned(),
                };
                (row.name.to_owned(), status)
            })
            .collect())
    }

    /// An owner's state, cgroup and memory in one round trip: every property of the unit at its
    /// object path (`GetAll` with the empty interface name, which systemd answers with all its
    /// interfaces'), where a state, a `GetUnit` and the type's properties took three. A unit
    /// systemd has not loaded comes back `not-found`.
    pub fn owner_facts(&self, unit: &str) -> Result<OwnerFacts> {
        let path = OwnedObjectPath::try_from(unit_object_path(unit))
            .map_err(|e| Error::systemd(format!("no object path for {unit}: {e}")))?;
        let reply = waited(|| {
            self.manager.inner().connection().call_method(
                Some("org.freedesktop.systemd1"),
                &path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &("",),
            )
        })?;
        let body = reply.body();
        let all: HashMap<String, zbus::zvariant::OwnedValue> = body.deserialize()?;
        let text = |name: &str| -> String {
            all.get(name)
                .and_then(|v| String::try_from(v.clone()).ok())
                .unwrap_or_default()
        };
        let number = |name: &str| -> u64 {
            all.get(name)
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(u64::MAX)
        };
        let job_id = all
            .get("Job")
            .and_then(|v| <(u32, OwnedObjectPath)>::try_from(v.clone()).ok())
            .map_or(0, |(id, _)| id);
        Ok(OwnerFacts {
            status: UnitStatus {
                name: unit.to_owned(),
                load_state: text("LoadState"),
                active_state: text("ActiveState"),
                sub_state: text("SubState"),
                job_id,
                job_type: String::new(),
            },
            control_group: text("ControlGroup"),
            memory: Memory {
                max: number("MemoryMax"),
                limit: number("MemoryLimit"),
                current: number("MemoryCurrent"),
            },
        })
    }

    /// hostchan's channel mounts on their way out, found by the description hostchan gives
    /// them (one `ListUnitsFiltered`): the ones stopped that systemd has yet to unload, and
    /// whether any is still stopping.
    pub fn settling_channel_mounts(&self) -> Result<(Vec<String>, bool)> {
        let reply = waited(|| {
            self.manager.inner().call_method(
                "ListUnitsFiltered",
                &(&["inactive", "failed", "deactivating"][..],),
            )
        })?;
        let body = reply.body();
        let rows: Vec<UnitRow<'_>> = body.deserialize()?;
        let mut over = Vec::new();
        let mut stopping = false;
        for row in rows {
            if !row.name.ends_with(".mount")
                || !row
                    .description
                    .starts_with(crate::units::CHANNEL_DESCRIPTION_PREFIX)
            {
                continue;
            }
            if row.active_state == "deactivating" || row.job_type == "stop" {
                stopping = true;
            } else if row.job_id == 0 {
                over.push(row.name.to_owned());
            }
        }
        Ok((over, stopping))
    }

    /// The properties of a unit's type interface (`org.freedesktop.systemd1.Scope`, ...), in
    /// one call.
    fn type_properties(&self, unit: &str) -> Result<HashMap<String, zbus::zvariant::OwnedValue>> {
        let interface = match unit.rsplit_once('.').map(|(_, suffix)| suffix) {
            Some("scope") => "org.freedesktop.systemd1.Scope",
            Some("service") => "org.freedesktop.systemd1.Service",
            Some("slice") => "org.freedesktop.systemd1.Slice",
            _ => {
                return Err(Error::usage(format!(
                "{unit} is not a scope, service or slice: only those hold a container's processes"
            )))
            }
        };
        // The unit's object path is its name escaped: no GetUnit round trip to PID 1 first.
        let path = OwnedObjectPath::try_from(unit_object_path(unit))
            .map_err(|e| Error::systemd(format!("no object path for {unit}: {e}")))?;
        let properties = waited(|| self.properties_of(path))?;
        let interface = zbus::names::InterfaceName::from_static_str_unchecked(interface);
        Ok(properties
            .get_all(interface)
            .map_err(zbus::Error::from)?
            .into_iter()
            .collect())
    }

    /// A unit's memory limit and usage, in bytes (`u64::MAX` is infinity / unknown).
    /// The `Where=` of a loaded mount unit; `None` when systemd has no such unit.
    pub fn mount_where(&self, unit: &str) -> Result<Option<String>> {
        let path = match self.manager.get_unit(unit) {
            Ok(path) => path,
            Err(e) => {
                let e = Error::from(e);
                return if e.kind() == Kind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        };
        let properties = self.properties_of(path)?;
        let interface =
            zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Mount");
        let value = properties
            .get(interface, "Where")
            .map_err(zbus::Error::from)?;
        Ok(String::try_from(value).ok())
    }

    /// The properties of the unit at `path` (from `GetUnit`).
    fn properties_of(
        &self,
        path: OwnedObjectPath,
    ) -> Result<zbus::blocking::fdo::PropertiesProxy<'static>> {
        Ok(
            zbus::blocking::fdo::PropertiesProxy::builder(self.manager.inner().connection())
                .destination("org.freedesktop.systemd1")
                .and_then(|b| b.path(path))
                .and_then(|b| b.build())?,
        )
    }

    /// Whether `unit` runs now.
    pub fn is_active(&self, unit: &str) -> Result<bool> {
        Ok(self
            .unit_states(&[unit])?
            .get(unit)
            .is_some_and(UnitStatus::is_active))
    }

    pub fn memory(&self, unit: &str) -> Result<Memory> {
        let all = self.type_properties(unit)?;
        let read = |name: &str| -> u64 {
            all.get(name)
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(u64::MAX)
        };
        Ok(Memory {
            max: read("MemoryMax"),
            limit: read("MemoryLimit"),
            current: read("MemoryCurrent"),
        })
    }
}

/// A unit's D-Bus object path, as systemd makes it (`bus_label_escape`): every byte but a
/// letter, or a digit after the first, is `_` and two lowercase hex digits.
fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
    }
    for (at, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (at > 0 && byte.is_ascii_digit()) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::unit_object_path;

    /// systemd's own examples (org.freedesktop.systemd1(5): avahi-daemon.service), the root
    /// mount, and a leading digit, which D-Bus does not allow to start a path element.
    #[test]
    fn unit_object_paths_are_systemds() {
        for (unit, path) in [
            ("avahi-daemon.service", "avahi_2ddaemon_2eservice"),
            ("-.mount", "_2d_2emount"),
            ("1x.scope", "_31x_2escope"),
            (
                "cri-containerd-ab12.scope",
                "cri_2dcontainerd_2dab12_2escope",
            ),
            ("", "_"),
        ] {
            assert_eq!(
                unit_object_path(unit),
                format!("/org/freedesktop/systemd1/unit/{path}")
            );
        }
    }
}
