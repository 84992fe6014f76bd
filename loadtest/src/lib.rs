//! The Switchboard load generator: the `loadtest` binary.
//!
//! It drives Switchboard (WebSocket), Mosquitto (MQTT 3.1.1) and
//! nats-server (core protocol) with the same workload and reports
//! delivered/s, loss, duplicates, reordering, hdrhistogram latency
//! percentiles and the CPU use of generator and server. Today's workload is
//! `pairs` (P senders → P receivers, 1:1) in closed-loop (`max`) or
//! open-loop (`rate`, latency from the intended send time) mode.
//!
//! - [`run`]: the command line, the run's timeline (connect, warm-up,
//!   measured window, drain) and the report;
//! - [`driver`]: the per-thread event loop (non-blocking sockets on `mio`);
//! - [`target`]: one module per protocol behind [`target::Protocol`];
//! - [`message`]: the envelope every target carries, stamped in place;
//! - [`accounting`]: pure per-pair counting (window, loss, duplicates,
//!   reordering);
//! - [`cpu`]: process CPU time from `/proc`.
//!
//! Only loopback addresses are accepted as targets, and every run is
//! bounded in time (connect timeout, warm-up, window, drain).

pub mod accounting;
pub mod cpu;
pub mod driver;
pub mod message;
pub mod run;
pub mod target;
