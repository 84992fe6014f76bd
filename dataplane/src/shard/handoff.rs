//! Hand-off: a WebSocket connection that authenticated on one shard moves
//! to its user's owner shard as a file descriptor, before anything is
//! written to it, so that the owner registers it for delivery before the
//! client sees the upgrade response (which travels with it).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;

use super::admission::ConnPermit;
use crate::auth::Identity;
use crate::tls::TlsSession;

/// A connection that authenticated on one shard, moving to its owner.
pub(crate) struct Handoff {
    pub(crate) fd: OwnedFd,
    /// The TLS session, when the client port speaks TLS.
    pub(crate) tls: Option<Box<TlsSession>>,
    pub(crate) identity: Arc<Identity>,
    /// The `101 Switching Protocols` response, not yet written.
    pub(crate) upgrade: Vec<u8>,
    /// Bytes read after the handshake (frames the client sent at once).
    pub(crate) leftover: BytesMut,
    pub(crate) peer: SocketAddr,
    pub(crate) permit: ConnPermit,
}
