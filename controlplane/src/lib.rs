//! Switchboard control plane (not built yet).
//!
//! This crate will own the registry of heads (data-plane nodes and service
//! endpoints) with registration, heartbeats and expiry; routing decisions by
//! strategy (least-load, round-robin, region-affinity, consistent-hash,
//! power-of-two-choices); the GraphQL schema of seed 000, the admin REST
//! API, SSE/WebSocket event streams and outbound webhooks. It runs as its
//! own process on tokio, off the data plane's hot path.
