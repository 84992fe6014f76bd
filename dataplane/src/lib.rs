//! The Switchboard data plane and the `switchboard` command-line tool.
//!
//! `switchboard serve` ([`server`]) runs one [`shard`] per core: each a
//! thread with its own io_uring (or epoll) reactor that owns a partition of
//! the presence table and the connections of the users it owns. Frontends
//! ([`frontend`]) decode HTTP and WebSocket bytes; [`auth`] verifies JWTs;
//! [`metrics`] and the admin server expose what the shards do. The client
//! subcommands ([`cli`], [`client`]) talk to a running server.

pub(crate) mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod frontend;
mod logging;
pub mod metrics;
pub mod server;
pub mod shard;
pub mod tls;
