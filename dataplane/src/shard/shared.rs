//! The state every shard reads: configuration, placement, the mesh, every
//! shard's metrics, the token verifier, TLS; immutable after start, or
//! atomics.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_protocol::ErrorCode;
use switchboard_protocol::session::SessionConfig;

use super::admission::{Admission, ConnPermit};
use super::ids::ShardId;
use super::mesh::Mesh;
use super::msg::Msg;
use super::presence::Owners;
use crate::config::Config;
use crate::metrics::ShardMetrics;

/// State every shard can read: immutable after start, or atomics.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The rules of every client session, from `config.limits`.
    pub(crate) session: SessionConfig,
    pub(crate) owners: Owners,
    pub(crate) mesh: Arc<Mesh<Msg>>,
    pub(crate) metrics: Vec<Arc<ShardMetrics>>,
    pub(crate) verifier: crate::auth::Verifier,
    /// TLS for the client port, when configured.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) shutting_down: AtomicBool,
    /// Connection counts and limits.
    pub(crate) admission: Arc<Admission>,
    /// The origin of the heartbeats.
    started: Instant,
    /// Per shard, when it last ran its tick: ms since `started`.
    heartbeats: Vec<AtomicU64>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        verifier: crate::auth::Verifier,
        tls: Option<Arc<rustls::ServerConfig>>,
        shards: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls,
            session: config.limits.session(),
            owners: Owners::new(shards, config.server.placement_seed),
            mesh: Mesh::new(shards, config.limits.cross_shard_queue),
            metrics: (0..shards).map(|_| Arc::new(ShardMetrics::default())).collect(),
            verifier,
            shutting_down: AtomicBool::new(false),
            admission: Admission::new(config.limits.max_connections, config.limits.max_connections_per_ip),
            started: Instant::now(),
            heartbeats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            config,
        })
    }

    /// Admits a new connection from `ip` (see [`Admission::admit`]).
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<ConnPermit, ErrorCode> {
        self.admission.admit(ip)
    }

    /// Records that `shard` is running at `now` (its tick).
    pub(crate) fn alive(&self, shard: ShardId, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.heartbeats[shard.index()].store(ms, Ordering::Relaxed);
    }

    /// The shards whose last heartbeat is older than `limit` at `now`: a
    /// shard that stopped running (stuck, or its thread gone).
    pub(crate) fn stalled_shards(&self, now: Instant, limit: Duration) -> Vec<usize> {
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let limit_ms = limit.as_millis() as u64;
        let beats = self.heartbeats.iter().map(|h| h.load(Ordering::Relaxed));
        beats.enumerate().filter(|(_, at)| now_ms.saturating_sub(*at) > limit_ms).map(|(i, _)| i).collect()
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.admission.connections()
    }
}
