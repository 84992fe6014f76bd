//! The Switchboard load generator: the `loadtest` binary.
//!
//! It drives Switchboard (WebSocket), Mosquitto (MQTT 3.1.1) and
//! nats-server (core protocol) with the same workload and reports
//! delivered/s, loss, duplicates, reordering, hdrhistogram latency
//! percentiles and the CPU use of generator and server. Workloads: `pairs`
//! (P senders → P receivers, 1:1), `fanout` (1 sender → K receivers of a
//! room/topic/subject) and `mesh` (N users, each sending to random others,
//! seeded), each in closed-loop (`max`) or open-loop (`rate`,
//! latency from the intended send time) mode; `idle` (server memory per
//! idle connection); `connect` (handshakes/s, a reconnect storm); `sink`
//! (the generator's own ceiling, no server). `report` compares the JSON
//! lines of many runs.
//!
//! - [`run`]: the command line, the run's timeline (connect, warm-up,
//!   measured window, drain) and the report;
//! - [`driver`]: the per-thread event loop of `pairs` (non-blocking sockets
//!   on `mio`); [`mesh`], [`fanout`], [`idle`], [`connect`], [`sink`]: the other
//!   workloads;
//! - [`html`]: the `--report` page with its SVG percentile plot;
//! - [`report`]: `loadtest report`, one page (tables, ratios, every
//!   server's latency curve on one plot per workload) from many runs' JSON
//!   lines;
//! - [`progress`]: the progress bar (only on a terminal);
//! - [`target`]: one module per protocol behind [`target::Protocol`];
//! - [`message`]: the `--size` payload every target carries (in an envelope
//!   for Switchboard), stamped in place;
//! - [`accounting`]: pure per-pair counting (window, loss, duplicates,
//!   reordering);
//! - [`cpu`]: process CPU time from `/proc`, and the generator threads' CPU
//!   clocks (was the generator the limit?).
//!
//! Only loopback addresses are accepted as targets, and every run is
//! bounded in time (connect timeout, warm-up, window, drain).

pub mod accounting;
pub mod connect;
pub mod cpu;
pub mod driver;
pub mod fanout;
pub mod html;
pub mod idle;
pub mod mesh;
pub mod message;
pub mod progress;
pub mod report;
pub mod run;
pub mod sink;
pub mod target;
