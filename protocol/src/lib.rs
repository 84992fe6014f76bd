//! The Switchboard wire protocol, shared by the server, the load generator,
//! the tests and client SDKs.
//!
//! This crate owns:
//! - the [`SecureEnvelope`](envelope) schema (FlatBuffers, `schema/envelope.fbs`),
//!   a zero-copy verified [`Envelope`] view and an [`EnvelopeBuilder`];
//! - the client↔server [`Frame`]s and their codec, plus the length-prefixed
//!   stream framing used on QUIC streams ([`stream`]);
//! - the [`ErrorCode`] enum with its WebSocket close and MQTT 5 reason codes;
//! - the MQTT topic mapping ([`mqtt`]);
//! - the transport-neutral client [`session`] state machine (sequences,
//!   batched answers and acks, rate, rooms, de-duplication, timers);
//! - validated identifiers ([`UserId`], [`DeviceId`], [`EnvelopeId`], …) and
//!   the [`Limits`] every decoder enforces.
//!
//! It must stay pure: no sockets, no async runtime, no clock (callers pass
//! `now`), no global state. Every decoder takes untrusted bytes and returns an
//! error instead of panicking, and never allocates beyond the configured
//! limits. The byte-level specification is `docs/protocol.md`.

pub mod envelope;
pub mod error;
pub mod frame;
pub mod id;
pub mod limits;
pub mod mqtt;
pub mod session;
pub mod stream;

#[allow(
    missing_docs,
    unreachable_pub,
    unused_imports,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
#[rustfmt::skip]
#[path = "generated/envelope_generated.rs"]
mod generated;

pub use envelope::{Envelope, EnvelopeBuilder, EnvelopeError, EnvelopeFlags};
pub use error::ErrorCode;
pub use frame::{Confirm, Frame, FrameError, Outcome};
pub use id::{Destination, DestinationKind, DeviceId, EnvelopeId, IdError, RoomName, ServiceName, UserId};
pub use limits::Limits;
