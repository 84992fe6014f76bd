//! The Switchboard data plane and the `switchboard` command-line tool.
//!
//! Today this crate owns configuration ([`config`]), development-token
//! issuing ([`auth`]) and the client subcommands ([`cli`]). The server
//! itself (`switchboard serve`: shards, frontends, presence, routing)
//! arrives with the data-plane issue and will live beside them in `shard/`,
//! `io/`, `frontend/`, `store/`, `push/`, `cluster/` and `metrics/`.

pub mod auth;
pub mod cli;
pub mod config;
