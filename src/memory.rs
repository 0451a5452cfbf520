//! The owner's memory limit: the container's own writes into its channel count against it
//! (tmpfs pages are charged to the writer), so a channel may need the limit raised, and a raise
//! is taken back when the channel goes.

use crate::error::Result;
use crate::model::MemoryChange;
use crate::systemd::{Memory, SystemdOps};

/// What to do about the owner's memory limit for a channel of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryPlan {
    /// No limit, or room enough.
    Nothing,
    /// `--grow-memory-limit`: raise `property` from `from` to `to`.
    Raise {
        property: &'static str,
        from: u64,
        to: u64,
    },
    /// The container can be OOM-killed by filling its channel.
    Warn {
        property: &'static str,
        limit: u64,
        current: u64,
    },
}

/// The container's own writes into the channel count against its memory limit (tmpfs pages
/// are charged to the writer): raise the limit by the channel's size when asked, and warn when
/// the limit leaves no room for a full channel.
pub fn memory_plan(memory: Memory, size: u64, grow: bool) -> MemoryPlan {
    let (property, limit) = match (memory.max, memory.limit) {
        (max, _) if max != u64::MAX => ("MemoryMax", max),
        (_, limit) if limit != u64::MAX => ("MemoryLimit", limit),
        _ => return MemoryPlan::Nothing,
    };
    if grow {
        return MemoryPlan::Raise {
            property,
            from: limit,
            to: limit.saturating_add(size),
        };
    }
    let current = if memory.current == u64::MAX {
        0
    } else {
        memory.current
    };
    if limit < current.saturating_add(size) {
        MemoryPlan::Warn {
            property,
            limit,
            current,
        }
    } else {
        MemoryPlan::Nothing
    }
}

/// Takes back what `--grow-memory-limit` added, when the channel goes before its owner: the
/// limit as it is now, less exactly what hostchan added (the owner may have changed it since).
pub fn undo_memory_change(systemd: &dyn SystemdOps, change: &MemoryChange) -> Result<()> {
    if !systemd.is_active(&change.unit)? {
        return Ok(());
    }
    let memory = systemd.memory(&change.unit)?;
    let now = match change.property.as_str() {
        "MemoryMax" => memory.max,
        "MemoryLimit" => memory.limit,
        _ => return Ok(()),
    };
    let added = change.to.saturating_sub(change.from);
    if now == u64::MAX || added == 0 {
        return Ok(());
    }
    let lowered = now.saturating_sub(added);
    let property: &'static str = if change.property == "MemoryMax" {
        "MemoryMax"
    } else {
        "MemoryLimit"
    };
    systemd.set_memory_limit(&change.unit, property, lowered)?;
    tracing::info!(
        "lowered {property} of {} from {now} to {lowered} bytes: the channel that needed it is gone",
        change.unit
    );
    Ok(())
}

/// Carries out [`memory_plan`] on the owner unit. `known`: the owner's memory as read for
/// another channel of the same create (only a raise needs it read again, right before).
pub fn memory_headroom(
    systemd: &dyn SystemdOps,
    owner: &str,
    size: u64,
    grow: bool,
    known: Option<Memory>,
) -> Result<Option<MemoryChange>> {
    let memory = match known
        .filter(|_| !grow)
        .map(Ok)
        .unwrap_or_else(|| systemd.memory(owner))
    {
        Ok(memory) => memory,
        Err(e) if grow => return Err(e),
        Err(_) => return Ok(None),
    };
    match memory_plan(memory, size, grow) {
        MemoryPlan::Nothing => Ok(None),
        MemoryPlan::Raise { property, from, to } => {
            systemd.set_memory_limit(owner, property, to)?;
            tracing::info!("raised {property} of {owner} from {from} to {to} bytes");
            Ok(Some(MemoryChange {
                unit: owner.to_owned(),
                property: property.to_owned(),
                from,
                to,
            }))
        }
        MemoryPlan::Warn {
            property,
            limit,
            current,
        } => {
            tracing::warn!(
                "{owner} can be OOM-killed by writing into this channel: its {property} is {limit} bytes, below its usage ({current}) plus the channel's size ({size}); use --grow-memory-limit or raise it"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_plans() {
        const NONE: u64 = u64::MAX;
        let memory = |max, limit, current| Memory {
            max,
            limit,
            current,
        };
        let cases = [
            (memory(NONE, NONE, 10), 100, false, MemoryPlan::Nothing),
            (memory(NONE, NONE, 10), 100, true, MemoryPlan::Nothing),
            (memory(1000, NONE, 10), 100, false, MemoryPlan::Nothing),
            (memory(1000, NONE, 900), 100, false, MemoryPlan::Nothing),
            (
                memory(1000, NONE, 901),
                100,
                false,
                MemoryPlan::Warn {
                    property: "MemoryMax",
                    limit: 1000,
                    current: 901,
                },
            ),
            (
                memory(1000, 500, 0),
                100,
                true,
                MemoryPlan::Raise {
                    property: "MemoryMax",
                    from: 1000,
                    to: 1100,
                },
            ),
            (
                memory(NONE, 500, NONE),
                600,
                false,
                MemoryPlan::Warn {
                    property: "MemoryLimit",
                    limit: 500,
                    current: 0,
                },
            ),
            (
                memory(NONE, u64::MAX - 1, 0),
                10,
                true,
                MemoryPlan::Raise {
                    property: "MemoryLimit",
                    from: u64::MAX - 1,
                    to: u64::MAX,
                },
            ),
        ];
        for (memory, size, grow, expected) in cases {
            assert_eq!(
                memory_plan(memory, size, grow),
                expected,
                "{memory:?} {size} {grow}"
            );
        }
    }
}
