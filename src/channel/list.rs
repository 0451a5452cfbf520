//! `list` and `status`.

use super::{ChannelInfo, Channels, Target};
use crate::error::{Error, Result};
use crate::hostfs;
use crate::model::ChannelState;
use crate::record::Record;
use crate::systemd::{Systemd, UnitStatus};

/// Threads reading records in `list`: this machine's two cores, and no more file systems
/// calls in flight than a small host handles well.
const LIST_READERS: usize = 2;

fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn panicked() -> Error {
    Error::runtime("a thread of list panicked")
}

impl Channels {
    /// Every channel with its state: one `ListUnitsByNames` call for all (units named after
    /// the record files), asked on one thread while two others read the records and measure
    /// the tmpfs usage, so that systemd's answer and the reading overlap.
    pub fn list(&self) -> Result<Vec<ChannelInfo>> {
        let connected = self.systemd.get().is_some();
        let store = &self.store;
        let (send_names, names_to_ask) = std::sync::mpsc::channel::<Vec<String>>();
        let (names, read, asked) = std::thread::scope(|scope| {
            // Connects while the records directory is read; asks once it has the names.
            let asking = (!connected).then(|| {
                scope.spawn(move || {
                    let systemd = Systemd::connect();
                    let Ok(names) = names_to_ask.recv() else {
                        return Ok(None);
                    };
                    let systemd = systemd?;
                    let states = systemd.unit_states(&as_strs(&names))?;
                    Ok::<_, Error>(Some((systemd, states)))
                })
            });
            // Dropped on the way out, so that the asking thread never waits for names that
            // will not come (the scope joins it).
            let send_names = send_names;
            let names = match store.unit_names() {
                Ok(names) if !names.is_empty() => names,
                other => {
                    drop(send_names);
                    let asked =
                        asking.map(|thread| thread.join().unwrap_or_else(|_| Err(panicked())));
                    return (other, Ok(Vec::new()), asked);
                }
            };
            let _ = send_names.send(names.clone());
            drop(send_names);
            let readers: Vec<_> = names
                .chunks(names.len().div_ceil(LIST_READERS))
                .map(|units| {
                    let units = units.to_vec();
                    scope.spawn(move || {
                        let records = store.records_of_units(&units)?;
                        let mut usage = hostfs::Usage::default();
                        Ok::<_, Error>(
                            records
                                .into_iter()
                                .map(|record| {
                                    let used = usage.used_bytes(record.host_path());
                                    (record, used)
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                })
                .collect();
            let read: Result<Vec<_>> = readers
                .into_iter()
                .map(|reader| reader.join().unwrap_or_else(|_| Err(panicked())))
                .collect();
            let asked = asking.map(|thread| thread.join().unwrap_or_else(|_| Err(panicked())));
            (Ok(names), read, asked)
        });
        let names = names?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut records: Vec<(Record, Option<u64>)> = read?.into_iter().flatten().collect();
        records.sort_by(|a, b| a.0.host_path().cmp(b.0.host_path()));
        let mut states = match asked.transpose()?.flatten() {
            Some((systemd, states)) => {
                let _ = self.systemd.set(Box::new(systemd));
                states
            }
            None => self.systemd()?.unit_states(&as_strs(&names))?,
        };
        // Records written after the directory was listed.
        let late: Vec<&str> = records
            .iter()
            .map(|(record, _)| record.unit())
            .filter(|unit| !states.contains_key(*unit))
            .collect();
        if !late.is_empty() {
            states.extend(self.systemd()?.unit_states(&late)?);
        }
        Ok(records
            .into_iter()
            .map(|(record, used)| {
                let status = states.get(record.unit());
                info(record, status, used)
            })
            .collect())
    }

    pub fn status(&self, target: &Target) -> Result<ChannelInfo> {
        let record = self.load(target)?;
        let systemd = self.systemd()?;
        let states = systemd.unit_states(&[record.unit()])?;
        let status = states.get(record.unit());
        let used = hostfs::used_bytes(record.host_path());
        Ok(info(record, status, used))
    }
}

/// `used`: the usage of whatever is mounted at the host path, shown only while the channel is
/// active (otherwise it is the usage of the file system below).
fn info(record: Record, status: Option<&UnitStatus>, used: Option<u64>) -> ChannelInfo {
    let (state, sub_state) = match status {
        Some(s) if s.exists() => (ChannelState::of_unit(&s.active_state), s.sub_state.clone()),
        _ => (ChannelState::Gone, String::new()),
    };
    let used = used.filter(|_| state == ChannelState::Active);
    ChannelInfo {
        channel: record.channel,
        used,
        state,
        sub_state,
        memory_limit: None,
    }
}
