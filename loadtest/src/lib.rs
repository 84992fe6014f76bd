//! Switchboard load generator (not built yet).
//!
//! This crate will own the `loadtest` binary: thread-per-core clients that
//! open thousands of WebSocket, QUIC or MQTT connections, drive `pairs`,
//! `fanout`, `mesh`, `idle` and `connect` workloads open-loop (fixed rate,
//! latency from the intended send time) or closed-loop, and report
//! delivered/s, loss and hdrhistogram latency percentiles. The same
//! workloads drive Mosquitto and nats-server for side-by-side comparisons.
//! Envelopes and frames come from `switchboard-protocol`.
