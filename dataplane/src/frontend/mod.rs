//! Frontends decode transport bytes into typed events for the shard; they
//! never touch presence or routing state.
//!
//! Everything here is sans-IO: the server's connection tasks own the sockets
//! and buffers, feed received bytes to these decoders and write the bytes
//! the encoders produce. No clock, no async, no shared state.
//!
//! - [`http`]: HTTP/1.1 request heads, bearer-token extraction, the
//!   WebSocket upgrade handshake and response building.
//! - [`ws`]: the WebSocket (RFC 6455) server-side frame codec.

pub mod http;
pub mod http_json;
pub mod ws;
