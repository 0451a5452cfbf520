//! What the machine contributes: its memory (MemTotal, MemAvailable) and page size.

use crate::error::{Context, Error, Result};

/// `MemTotal` from the text of /proc/meminfo, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo_bytes(meminfo, "MemTotal:")
}

/// A `/proc/meminfo` field (`"MemAvailable:"`), in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// What the machine contributes to the effective configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub mem_total: u64,
    pub page_size: u64,
}

impl Machine {
    pub fn current() -> Result<Machine> {
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(4096);
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .context("cannot read /proc/meminfo to find the maximum size")?;
        let mem_total = mem_total_bytes(&meminfo).ok_or_else(|| {
            Error::runtime(
                "cannot find MemTotal in /proc/meminfo to find the maximum size".to_owned(),
            )
        })?;
        Ok(Machine {
            mem_total,
            page_size,
        })
    }
}

/// The text of /proc/meminfo.
pub fn meminfo() -> Result<String> {
    std::fs::read_to_string("/proc/meminfo")
        .context("cannot read /proc/meminfo to find the memory available")
}
