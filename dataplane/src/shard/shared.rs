//! The state every shard reads: configuration, placement, the mesh, every
//! shard's metrics, the token verifier, TLS; immutable after start, or
//! atomics.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use switchboard_protocol::ErrorCode;
use switchboard_protocol::session::SessionConfig;

use super::admission::{Admission, ConnPermit};
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
            config,
        })
    }

    /// Admits a new connection from `ip` (see [`Admission::admit`]).
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<ConnPermit, ErrorCode> {
        self.admission.admit(ip)
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.admission.connections()
    }
}
