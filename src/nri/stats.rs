//! What the plugin counts while it serves, for Prometheus beside the channels' own metrics
//! ([`crate::metrics`]): whether it is serving, how long CreateContainer and teardowns take,
//! refusals by reason, orphans removed at (re)connection, D-Bus errors, and the runtime's limit
//! the answers are held to.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Kind};

/// Upper bounds of the latency buckets, in seconds: from a channel answered at once (a few
/// ms) to the runtime's default request timeout (2 s).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0,
];

#[derive(Default)]
pub struct Stats {
    /// Registered with the runtime and synchronized on the current connection: what `/healthz`
    /// answers 200 for.
    pub serving: AtomicBool,
    request_timeout_ms: AtomicU64,
    creates: Histogram,
    teardowns: Histogram,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    orphans: AtomicU64,
}

impl Stats {
    /// The runtime's request timeout, as it said or as configured.
    pub fn set_request_timeout(&self, limit: Duration) {
        self.request_timeout_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// A CreateContainer that asked for channels, answered after `took`.
    pub fn created(&self, took: Duration) {
        self.creates.observe(took);
    }

    /// A container's or pod's channels taken down in `took`.
    pub fn torn_down(&self, took: Duration) {
        self.teardowns.observe(took);
    }

    /// A container refused for `error` (`deadline`: systemd did not answer in time).
    pub fn refused(&self, error: &Error, deadline: bool) {
        let reason = if deadline {
            "deadline"
        } else {
            match error.kind() {
                Kind::Invalid | Kind::Usage => "invalid",
                Kind::Config => "config",
                Kind::Owner => "owner",
                Kind::AlreadyExists => "already_a_channel",
                Kind::NotFound => "not_found",
                Kind::Systemd => "systemd",
                Kind::Runtime => "runtime",
            }
        };
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Channels of pods or containers gone while the plugin was not there, removed at a
    /// Synchronize.
    pub fn orphans_removed(&self, count: usize) {
        self.orphans.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// The counters in the text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "hostchan_nri_serving",
            "1 while the plugin is registered with the runtime and synchronized.",
            u8::from(self.serving.load(Ordering::Relaxed)).to_string(),
        );
        let timeout = self.request_timeout_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        gauge(
            &mut out,
            "hostchan_nri_request_timeout_seconds",
            "How long the runtime waits for the plugin's answer; the plugin answers within three quarters of it.",
            timeout.to_string(),
        );
        self.creates.render(
            &mut out,
            "hostchan_nri_create_container_seconds",
            "CreateContainer requests that asked for channels, from request to answer.",
        );
        self.teardowns.render(
            &mut out,
            "hostchan_nri_teardown_seconds",
            "A container's or pod's channels taken down, from event to done.",
        );
        let _ = writeln!(
            out,
            "# HELP hostchan_nri_refusals_total Containers refused, by reason.\n# TYPE hostchan_nri_refusals_total counter"
        );
        for (reason, count) in self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "hostchan_nri_refusals_total{{reason=\"{reason}\"}} {count}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "hostchan_nri_orphans_removed_total",
            "Channels of pods or containers that went while the plugin was away, removed when it synchronized.",
            self.orphans.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "hostchan_dbus_errors_total",
            "D-Bus calls to systemd that failed (refused, timed out or lost), since the plugin started.",
            crate::systemd::dbus_errors(),
        );
        out
    }
}

/// A Prometheus histogram of durations.
struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_each_observation_in_every_bucket_above_it() {
        let stats = Stats::default();
        stats.created(Duration::from_millis(3));
        stats.created(Duration::from_millis(700));
        stats.refused(&Error::invalid("size", "lots", "bad"), false);
        stats.refused(&Error::systemd("slow"), true);
        stats.refused(&Error::systemd("slow"), true);
        stats.orphans_removed(2);
        let text = stats.render();
        for line in [
            "hostchan_nri_create_container_seconds_bucket{le=\"0.0025\"} 0",
            "hostchan_nri_create_container_seconds_bucket{le=\"0.005\"} 1",
            "hostchan_nri_create_container_seconds_bucket{le=\"0.5\"} 1",
            "hostchan_nri_create_container_seconds_bucket{le=\"1\"} 2",
            "hostchan_nri_create_container_seconds_bucket{le=\"+Inf\"} 2",
            "hostchan_nri_create_container_seconds_sum 0.703",
            "hostchan_nri_create_container_seconds_count 2",
            "hostchan_nri_teardown_seconds_count 0",
            "hostchan_nri_refusals_total{reason=\"deadline\"} 2",
            "hostchan_nri_refusals_total{reason=\"invalid\"} 1",
            "hostchan_nri_orphans_removed_total 2",
            "hostchan_nri_serving 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
