//! Metrics: per-shard counters written only by their shard (relaxed loads
//! and stores, no locked instructions) and rendered in the Prometheus text
//! format by the admin server, which sums nothing on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_protocol::Outcome;

/// Transport of a connection (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// WebSocket on the client port.
    WebSocket,
    /// One `POST /send` request.
    Http,
}

impl Protocol {
    /// Label used in metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "ws",
            Self::Http => "http",
        }
    }
}

/// Route kinds (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `user:` destinations.
    User,
    /// `room:` destinations.
    Room,
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning shard's thread writes a counter, so this
    /// is a plain load and store: a locked read-modify-write is a full
    /// memory barrier per count, where the shard waited for its earlier
    /// cache misses (12% of its time under 1:1 load; BENCHMARKS.md).
    /// Readers may see a count late, never torn.
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets (upper bounds, µs) of the routing-time histogram.
pub const LATENCY_BUCKETS_US: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    /// Records one observation in µs.
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].inc();
        self.sum_us.add(us);
    }
}

/// One shard's metrics.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// 1 if the shard runs on io_uring, 0 on epoll.
    pub uring: Gauge,
    ws_open: Gauge,
    http_open: Gauge,
    ws_total: Counter,
    http_total: Counter,
    /// Envelopes received (verified).
    pub envelopes_in: Counter,
    /// Envelope copies queued to connections.
    pub delivered: Counter,
    routed: [[Counter; 4]; 2],
    /// Sends refused, by error code.
    pub rejected: RejectCounters,
    /// Cross-shard messages refused because a queue was full.
    pub cross_shard_full: Counter,
    /// Deliveries refused because a connection was over its queue bound.
    pub queue_overflow: Counter,
    /// Connections closed as slow consumers.
    pub slow_consumers: Counter,
    /// Deliveries not acknowledged when their connection closed (written
    /// or not): dropped, as no mailbox keeps them yet.
    pub unacked_at_close: Counter,
    /// Connections accepted on this shard's listener (before any hand-off).
    pub accepted: Counter,
    /// Connections handed to their owner shard after the handshake.
    pub handoffs: Counter,
    /// Handshakes refused (auth, limits, bad requests).
    pub handshake_failures: Counter,
    /// Time from receiving a send to queueing its answer, for sends routed
    /// on this shard.
    pub route_latency: Histogram,
    /// Inbound cross-shard queue depth, summed over sources.
    queue_depth: Gauge,
}

/// Rejections by error code (the codes a send can fail with).
#[derive(Debug, Default)]
pub struct RejectCounters {
    counts: [Counter; 32],
}

impl RejectCounters {
    /// Counts a rejection with `code`.
    pub fn inc(&self, code: switchboard_protocol::ErrorCode) {
        let i = switchboard_protocol::ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(31).min(31);
        self.counts[i].inc();
    }
}

impl ShardMetrics {
    pub(crate) fn connection_opened(&self, p: Protocol) {
        match p {
            Protocol::WebSocket => {
                self.ws_open.0.fetch_add(1, Ordering::Relaxed);
                self.ws_total.inc();
            }
            Protocol::Http => {
                self.http_open.0.fetch_add(1, Ordering::Relaxed);
                self.http_total.inc();
            }
        }
    }

    pub(crate) fn connection_closed(&self, p: Protocol) {
        let g = match p {
            Protocol::WebSocket => &self.ws_open,
            Protocol::Http => &self.http_open,
        };
        g.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn routed(&self, kind: RouteKind, outcome: Outcome) {
        let k = match kind {
            RouteKind::User => 0,
            RouteKind::Room => 1,
        };
        self.routed[k][usize::from(outcome.wire()).min(3)].inc();
    }

    /// Sets the inbound cross-shard queue depth, summed over sources.
    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as u64);
    }
}

/// Renders every shard's metrics in the Prometheus text format.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], open_connections: usize) -> String {
    let mut o = String::with_capacity(8192);
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP switchboard_{name} {help}\n# TYPE switchboard_{name} {kind}");
    };
    family(&mut o, "io_uring", "gauge", "1 if the shard runs on io_uring, 0 on the epoll fallback.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_io_uring{{shard=\"{i}\"}} {}", m.uring.get());
    }
    family(&mut o, "connections", "gauge", "Open client connections by protocol.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_connections{{shard=\"{i}\",protocol=\"ws\"}} {}", m.ws_open.get());
        let _ = writeln!(o, "switchboard_connections{{shard=\"{i}\",protocol=\"http\"}} {}", m.http_open.get());
    }
    family(&mut o, "connections_open", "gauge", "Open connections counted against the global limit.");
    let _ = writeln!(o, "switchboard_connections_open {open_connections}");
    family(&mut o, "connections_total", "counter", "Connections accepted by protocol.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_connections_total{{shard=\"{i}\",protocol=\"ws\"}} {}", m.ws_total.get());
        let _ = writeln!(o, "switchboard_connections_total{{shard=\"{i}\",protocol=\"http\"}} {}", m.http_total.get());
    }
    family(&mut o, "envelopes_in_total", "counter", "Envelopes received and verified.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_envelopes_in_total{{shard=\"{i}\"}} {}", m.envelopes_in.get());
    }
    family(&mut o, "envelopes_routed_total", "counter", "Envelopes routed, by route and outcome.");
    for (i, m) in shards.iter().enumerate() {
        for (k, route) in ["user", "room"].iter().enumerate() {
            for (w, outcome) in ["delivered", "recipient-offline", "stored", "duplicate"].iter().enumerate() {
                let v = m.routed[k][w].get();
                let _ = writeln!(
                    o,
                    "switchboard_envelopes_routed_total{{shard=\"{i}\",route=\"{route}\",outcome=\"{outcome}\"}} {v}"
                );
            }
        }
    }
    family(&mut o, "envelopes_out_total", "counter", "Envelope copies queued to connections.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_envelopes_out_total{{shard=\"{i}\"}} {}", m.delivered.get());
    }
    family(&mut o, "envelopes_rejected_total", "counter", "Sends answered with an error, by code.");
    for (i, m) in shards.iter().enumerate() {
        for (j, code) in switchboard_protocol::ErrorCode::ALL.iter().enumerate().take(31) {
            let v = m.rejected.counts[j].get();
            if v > 0 {
                let _ =
                    writeln!(o, "switchboard_envelopes_rejected_total{{shard=\"{i}\",code=\"{}\"}} {v}", code.name());
            }
        }
    }
    family(&mut o, "cross_shard_queue_depth", "gauge", "Messages waiting in a shard's inbound queues.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(o, "switchboard_cross_shard_queue_depth{{shard=\"{i}\"}} {}", m.queue_depth.get());
    }
    type Read = fn(&ShardMetrics) -> u64;
    let counters: [(&str, &str, Read); 7] = [
        ("accepted_total", "Connections accepted on this shard's listener (SO_REUSEPORT spread).", |m| {
            m.accepted.get()
        }),
        ("cross_shard_full_total", "Cross-shard messages refused because a queue was full.", |m| {
            m.cross_shard_full.get()
        }),
        ("queue_overflow_total", "Deliveries refused because a connection's queue was over its bound.", |m| {
            m.queue_overflow.get()
        }),
        ("slow_consumer_disconnects_total", "Connections closed as slow consumers.", |m| m.slow_consumers.get()),
        (
            "deliveries_unacked_at_close_total",
            "Deliveries not acknowledged when their connection closed (dropped: no mailbox yet).",
            |m| m.unacked_at_close.get(),
        ),
        ("handoffs_total", "Connections handed to their owner shard.", |m| m.handoffs.get()),
        ("handshake_failures_total", "Handshakes refused.", |m| m.handshake_failures.get()),
    ];
    for (name, help, get) in counters {
        family(&mut o, name, "counter", help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(o, "switchboard_{name}{{shard=\"{i}\"}} {}", get(m));
        }
    }
    family(
        &mut o,
        "route_latency_seconds",
        "histogram",
        "Time from a send's arrival to its routing on the receiving shard (one envelope in 64 is timed).",
    );
    for (i, m) in shards.iter().enumerate() {
        let mut cumulative = 0;
        for (b, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += m.route_latency.buckets[b].get();
            let le = *bound as f64 / 1e6;
            let _ = writeln!(o, "switchboard_route_latency_seconds_bucket{{shard=\"{i}\",le=\"{le}\"}} {cumulative}");
        }
        cumulative += m.route_latency.buckets[LATENCY_BUCKETS_US.len()].get();
        let _ = writeln!(o, "switchboard_route_latency_seconds_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}");
        let sum = m.route_latency.sum_us.get() as f64 / 1e6;
        let _ = writeln!(o, "switchboard_route_latency_seconds_sum{{shard=\"{i}\"}} {sum}");
        let _ = writeln!(o, "switchboard_route_latency_seconds_count{{shard=\"{i}\"}} {cumulative}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = std::sync::Arc::new(ShardMetrics::default());
        m.connection_opened(Protocol::WebSocket);
        m.routed(RouteKind::User, Outcome::Delivered);
        m.route_latency.observe_us(7);
        m.route_latency.observe_us(1_000_000);
        m.rejected.inc(switchboard_protocol::ErrorCode::SenderMismatch);
        let text = render(&[m], 1);
        assert!(text.contains("switchboard_connections{shard=\"0\",protocol=\"ws\"} 1"));
        assert!(text.contains("route=\"user\",outcome=\"delivered\"} 1"));
        assert!(text.contains("switchboard_route_latency_seconds_bucket{shard=\"0\",le=\"0.00001\"} 1"));
        assert!(text.contains("switchboard_route_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2"));
        assert!(text.contains("code=\"sender-mismatch\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "bad sample line {line:?}");
        }
    }
}
