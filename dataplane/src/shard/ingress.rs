//! What a shard does with a connection's input, for every transport: the
//! frontend decodes its transport (WebSocket today; MQTT and QUIC next)
//! into protocol frames or envelopes, and these methods run them through
//! the connection's [`Session`](switchboard_protocol::session::Session)
//! and carry out its [`Event`]s (route, join, leave, presence). Answers go
//! to the connection's queue; the frontend calls
//! [`Shard::flush_dirty`] once per batch of input.

use std::time::Instant;

use bytes::{Buf, Bytes};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::session::{Event, Reply, Transmit};

use super::Shard;
use super::conn::ConnTx;
use super::ids::{ConnId, Member};
use super::msg::{Msg, Origin};

/// The input a session handles.
#[derive(Clone, Copy)]
enum Input {
    /// A protocol frame.
    Frame,
    /// An envelope alone (HTTP, MQTT publish), answered unless `no_answer`.
    Envelope { no_answer: bool },
}

impl Shard {
    /// Handles one protocol frame of connection `id` (`frame` is the
    /// frame's bytes; an envelope in it is routed as a slice of them, no
    /// copy). Returns false once the connection is closing: frames after
    /// it must not be handed in.
    pub(crate) fn on_frame(&self, id: ConnId, frame: Bytes, now: Instant, now_ms: u64) -> bool {
        self.on_input(id, frame, Input::Frame, now, now_ms)
    }

    /// Prefetches the de-duplication slot of `frame` if it is a `send`
    /// of connection `id` (see `decode_frames`).
    pub(crate) fn prefetch_send(&self, id: ConnId, frame: &[u8]) {
        let dedup = self.dedup.borrow();
        self.with_conn(id, |c| switchboard_protocol::session::prefetch_send(frame, c.identity.user().as_str(), &dedup));
    }

    /// Handles one envelope sent outside a frame (`POST /send`).
    pub(crate) fn on_envelope(&self, id: ConnId, envelope: Bytes, no_answer: bool, now: Instant, now_ms: u64) {
        self.on_input(id, envelope, Input::Envelope { no_answer }, now, now_ms);
    }

    fn on_input(&self, id: ConnId, bytes: Bytes, input: Input, now: Instant, now_ms: u64) -> bool {
        let config = &self.shared.session;
        let event = {
            let mut dedup = self.dedup.borrow_mut();
            self.with_conn(id, |c| {
                if c.is_closing() {
                    return None;
                }
                let user = c.identity.user().as_str();
                let mut tx = ConnTx { tx: &mut c.tx, protocol: c.protocol, metrics: &self.metrics };
                let s = &mut c.session;
                let event = match input {
                    Input::Frame => s.handle_frame(config, user, &bytes, now, now_ms, &mut dedup, &mut tx),
                    Input::Envelope { no_answer } => {
                        s.handle_send(config, user, &bytes, no_answer, now, now_ms, &mut dedup, &mut tx)
                    }
                };
                Some((event, c.tx.is_closing()))
            })
            .flatten()
        };
        let Some((event, closing)) = event else { return false };
        let me = Member { shard: self.id, conn: id };
        match event {
            Event::Route { sequence, id: env_id, destination, envelope, echo } => {
                self.metrics.envelopes_in.inc();
                let start = envelope.as_ptr() as usize - bytes.as_ptr() as usize;
                let len = envelope.len();
                let from = Origin { member: me, sequence, id: env_id };
                let Some(target) = self.target(envelope, destination) else {
                    // The session refuses other kinds first; should one get
                    // here, its send is still answered.
                    let refused = Err((ErrorCode::InvalidDestination, "destination kind is not routed"));
                    self.answer_send(from, refused);
                    return true;
                };
                // The envelope is the frame's bytes, narrowed in place: no
                // copy, no refcount traffic.
                self.route(from, target, narrow(bytes, start, len), echo);
                // Sampled: a clock read per envelope would cost more than
                // the rest of the metrics together.
                if self.sample_latency() {
                    self.metrics.route_latency.observe_us(now.elapsed().as_micros() as u64);
                }
            }
            Event::Join { request_id, room } => {
                let owner = self.shared.owners.room(room);
                if !self.send_or_handle(owner, Msg::Join { room: room.into(), member: me, request_id }) {
                    self.with_conn(id, |c| c.session.join_failed(room));
                    self.busy(id, request_id);
                }
            }
            Event::Leave { request_id, room } => {
                let owner = self.shared.owners.room(room);
                let msg = Msg::Leave { room: room.into(), member: me, request_id: Some(request_id) };
                if !self.send_or_handle(owner, msg) {
                    self.busy(id, request_id);
                }
            }
            Event::PresenceQuery { request_id, user } => {
                let owner = self.shared.owners.user(user);
                if !self.send_or_handle(owner, Msg::PresenceQuery { user: user.into(), from: me, request_id }) {
                    self.busy(id, request_id);
                }
            }
            _ => {}
        }
        // Carrying out an event never closes the connection.
        !closing
    }

    /// Answers a request that could not be passed on (a full queue).
    fn busy(&self, id: ConnId, request_id: u32) {
        self.with_conn(id, |c| {
            let (_, mut tx) = c.parts(&self.metrics);
            tx.reply(Reply::error(ErrorCode::Overloaded, None, Some(request_id), None, "server busy, retry"));
        });
    }

    /// Notes traffic from a connection (resets its idle and ping timers).
    pub(crate) fn seen(&self, id: ConnId, now: Instant) {
        self.with_conn(id, |c| c.session.handle_activity(now));
    }
}

/// `bytes[start..start + len]` as the same reference (no refcount update,
/// unlike `slice`).
pub(crate) fn narrow(mut bytes: Bytes, start: usize, len: usize) -> Bytes {
    bytes.advance(start);
    bytes.truncate(len);
    bytes
}
