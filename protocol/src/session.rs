//! The client session: every rule of a connection, for every transport.
//!
//! A [`Session`] is a sans-IO state machine in the manner of `quinn-proto`:
//! the frontend (WebSocket, QUIC, MQTT, HTTP) decodes bytes into frames and
//! hands them in with the time; the session checks them (authenticated
//! sender, limits, ttl, rate, flags, rooms, de-duplication), numbers sends
//! and deliveries, and says what to do: an [`Event`] for the shard (route
//! an envelope, join a room, …) and transport-neutral [`Reply`] items for
//! the connection's outbound queue, which the frontend's encoder turns into
//! bytes. It reads no clock, opens no socket and spawns nothing: tests drive
//! it with byte literals and a simulated clock.
//!
//! Protocol 1.1 answers and acknowledges in batches (the model is AMQP 0-9-1
//! publisher confirms and `basic.ack` with `multiple`): every `send` has an
//! implicit sequence number (the first is 1); outcomes are collected here in
//! sequence order and [`Session::flush_answers`] emits one
//! [`Reply::Accepted`] per run of equal outcomes, which the encoder merges
//! into one `accepted` frame. A failure is answered at once by an `error`
//! naming the sequence and the envelope id, so it always precedes the
//! `accepted` entry that covers its sequence. Receivers acknowledge
//! deliveries cumulatively by their implicit delivery sequence.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::envelope::{Envelope, EnvelopeFlags};
use crate::error::ErrorCode;
use crate::frame::{Confirm, Frame, FrameType, Outcome};
use crate::id::{Destination, EnvelopeId};
use crate::limits::Limits;

/// The rules a server applies to every session (shared, not per
/// connection).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Frame and envelope limits.
    pub limits: Limits,
    /// Longest ttl honoured; longer ones are cut to it.
    pub max_ttl_ms: u32,
    /// Rooms one connection may be in.
    pub max_rooms: usize,
    /// Token bucket rate per connection; 0 = unlimited.
    pub send_rate_per_sec: u32,
    /// Token bucket size.
    pub send_burst: u32,
    /// Deliveries queued or unacknowledged before more are refused.
    pub outbound_frames: usize,
    /// Bytes queued or unacknowledged before more are refused.
    pub outbound_bytes: usize,
    /// Over the outbound bound this long: closed with `slow-consumer`.
    pub slow_consumer_grace: Duration,
    /// Silence after which the server pings.
    pub ping_interval: Duration,
    /// Silence after which the connection is closed with `idle-timeout`.
    pub idle_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_ttl_ms: 7 * 24 * 3600 * 1000,
            max_rooms: 64,
            send_rate_per_sec: 0,
            send_burst: 1000,
            outbound_frames: 4096,
            outbound_bytes: 4 << 20,
            slow_consumer_grace: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Something the connection must send, before transport encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Sends up to `through` that have no answer yet were accepted with
    /// `outcome`. Consecutive ones are one `accepted` frame on the wire.
    Accepted(Confirm),
    /// A request or send failed (boxed: errors are rare, and queued items
    /// stay small).
    Error(Box<ErrorReply>),
    /// A join or leave succeeded.
    Done {
        /// The request's id.
        request_id: u32,
    },
    /// The answer to a presence query.
    Presence {
        /// The request's id.
        request_id: u32,
        /// Live connections of the user.
        connections: u32,
        /// The user asked about.
        user: Box<str>,
    },
    /// The answer to a protocol-level ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// The body of an `error` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// The envelope concerned, when its id could be read.
    pub id: Option<EnvelopeId>,
    /// The request answered (join, leave, presence query).
    pub request_id: Option<u32>,
    /// The send answered, by its sequence number.
    pub sequence: Option<u64>,
    /// For people and logs.
    pub reason: &'static str,
}

impl Reply {
    /// An error answer.
    pub fn error(
        code: ErrorCode,
        id: Option<EnvelopeId>,
        request_id: Option<u32>,
        sequence: Option<u64>,
        reason: &'static str,
    ) -> Self {
        Self::Error(Box::new(ErrorReply { code, id, request_id, sequence, reason }))
    }
}

/// Where a session's output goes: the connection's outbound queue.
pub trait Transmit {
    /// Queue an answer.
    fn reply(&mut self, reply: Reply);
    /// Close the connection with `code` after what is queued (the error
    /// frame for it, if any, was queued just before).
    fn close(&mut self, code: ErrorCode, reason: &'static str);
}

/// What the shard must do for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Nothing (answers, if any, were transmitted).
    None,
    /// Route a verified envelope; answer it later with
    /// [`Session::handle_outcome`] for `sequence`.
    Route {
        /// The send's sequence number.
        sequence: u64,
        /// The envelope's id.
        id: EnvelopeId,
        /// Where it goes.
        destination: Destination<'a>,
        /// The envelope bytes (a slice of the frame).
        envelope: &'a [u8],
        /// The sender's own connection receives room envelopes too.
        echo: bool,
    },
    /// Add this connection to a room (already counted in the session);
    /// answer with `done`, or call [`Session::join_failed`].
    Join {
        /// Echoed in the answer.
        request_id: u32,
        /// The room.
        room: &'a str,
    },
    /// Remove this connection from a room (already removed from the
    /// session); answer with `done`.
    Leave {
        /// Echoed in the answer.
        request_id: u32,
        /// The room.
        room: &'a str,
    },
    /// Count the live connections of a user.
    PresenceQuery {
        /// Echoed in the answer.
        request_id: u32,
        /// The user.
        user: &'a str,
    },
}

/// What a timer check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing to do.
    None,
    /// Send a transport-level ping (the connection has been silent).
    Ping,
    /// Close the connection with this code and reason.
    Close(ErrorCode, &'static str),
}

/// One connection's session state. Small and allocation-free while idle.
#[derive(Debug)]
pub struct Session {
    answers: Answers,
    deliveries: Deliveries,
    rooms: Vec<Box<str>>,
    tokens: TokenBucket,
    last_seen: Instant,
    pinged: bool,
    /// Since when deliveries have been refused for the outbound bound.
    slow_since: Option<Instant>,
    /// When the credentials that opened the session stop being valid.
    expires: Option<Instant>,
    closing: bool,
}

impl Session {
    /// A new session, opened at `now`.
    pub fn new(config: &SessionConfig, now: Instant) -> Self {
        Self {
            answers: Answers::default(),
            deliveries: Deliveries::default(),
            rooms: Vec::new(),
            tokens: TokenBucket::new(config.send_burst, now),
            last_seen: now,
            pinged: false,
            slow_since: None,
            expires: None,
            closing: false,
        }
    }

    /// Closes the session with `token-expired` at the first timeout check
    /// at or after `at` (the end of its token's validity).
    pub fn expire_at(&mut self, at: Instant) {
        self.expires = Some(at);
    }

    /// True once a fatal error closed the session: frames after it must not
    /// be handed in.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The rooms this connection is in.
    pub fn rooms(&self) -> &[Box<str>] {
        &self.rooms
    }

    /// Takes the room list (the connection is gone: leave them all).
    pub fn take_rooms(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.rooms)
    }

    /// Notes traffic from the peer at `now` (any bytes, also transport
    /// pings and pongs): resets the ping and idle timers.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_seen = now;
        self.pinged = false;
    }

    /// Handles one decoded-or-not frame of `user`'s connection.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_frame<'a, S: BuildHasher>(
        &mut self,
        config: &SessionConfig,
        user: &str,
        frame: &'a [u8],
        now: Instant,
        now_ms: u64,
        dedup: &mut Dedup<S>,
        out: &mut impl Transmit,
    ) -> Event<'a> {
        let decoded = match Frame::decode(frame, &config.limits) {
            Ok(f) => f,
            Err(e) => {
                let code = e.code();
                // A send consumes its sequence number even when it cannot be
                // decoded, so that the client's count stays in step.
                let ty = frame.get(1).copied().and_then(FrameType::from_wire);
                let sequence = (ty == Some(FrameType::Send)).then(|| self.answers.assign(false));
                let request_id = match ty {
                    Some(FrameType::JoinRoom | FrameType::LeaveRoom | FrameType::PresenceQuery) => {
                        frame.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    _ => None,
                };
                if let Some(seq) = sequence {
                    self.answers.resolve_silently(seq);
                }
                self.fail(out, code, None, request_id, sequence, frame_reason(code));
                return Event::None;
            }
        };
        match decoded {
            Frame::Send { no_answer, envelope } => {
                self.handle_send(config, user, envelope, no_answer, now, now_ms, dedup, out)
            }
            Frame::DeliveryAck { through } => {
                if !self.deliveries.ack(through) {
                    self.fail(out, ErrorCode::MalformedFrame, None, None, None, "ack beyond the last delivery");
                }
                Event::None
            }
            Frame::JoinRoom { request_id, room } => {
                let room = room.as_str();
                if self.rooms.iter().any(|r| **r == *room) {
                    out.reply(Reply::Done { request_id });
                    Event::None
                } else if self.rooms.len() >= config.max_rooms {
                    self.fail(out, ErrorCode::RoomLimit, None, Some(request_id), None, "too many rooms");
                    Event::None
                } else {
                    self.rooms.push(room.into());
                    Event::Join { request_id, room }
                }
            }
            Frame::LeaveRoom { request_id, room } => {
                let room = room.as_str();
                let before = self.rooms.len();
                self.rooms.retain(|r| **r != *room);
                if self.rooms.len() == before {
                    let reason = "not a member of this room";
                    self.fail(out, ErrorCode::NotAMember, None, Some(request_id), None, reason);
                    Event::None
                } else {
                    Event::Leave { request_id, room }
                }
            }
            Frame::PresenceQuery { request_id, user } => Event::PresenceQuery { request_id, user: user.as_str() },
            Frame::Ping { nonce } => {
                out.reply(Reply::Pong { nonce });
                Event::None
            }
            Frame::Pong { .. } => Event::None,
            _ => {
                let reason = "clients may not send this frame type";
                self.fail(out, ErrorCode::UnknownFrameType, None, None, None, reason);
                Event::None
            }
        }
    }

    /// Handles one envelope sent by `user` (a `send` frame's body, or an
    /// HTTP or MQTT publish): it takes the next send sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_send<'a, S: BuildHasher>(
        &mut self,
        config: &SessionConfig,
        user: &str,
        envelope: &'a [u8],
        no_answer: bool,
        now: Instant,
        now_ms: u64,
        dedup: &mut Dedup<S>,
        out: &mut impl Transmit,
    ) -> Event<'a> {
        let sequence = self.answers.assign(no_answer);
        let seq = Some(sequence);
        let env = match Envelope::parse_or_id(envelope, &config.limits) {
            Ok(e) => e,
            Err((e, id)) => {
                self.answers.resolve_silently(sequence);
                let code = e.code();
                let reason =
                    if code.is_fatal() { "unsupported envelope version" } else { "envelope failed verification" };
                if !no_answer || code.is_fatal() {
                    self.fail(out, code, id, None, seq, reason);
                }
                return Event::None;
            }
        };
        let id = env.id();
        let refuse = |this: &mut Self, out: &mut _, code, reason| {
            this.answers.resolve_silently(sequence);
            if !no_answer {
                this.fail(out, code, Some(id), None, seq, reason);
            }
            Event::None
        };
        if env.sender().as_str() != user {
            return refuse(self, out, ErrorCode::SenderMismatch, "sender is not the authenticated user");
        }
        if env.is_expired(now_ms, config.max_ttl_ms) {
            return refuse(self, out, ErrorCode::EnvelopeExpired, "ttl elapsed");
        }
        let flags = env.flags();
        if flags.contains(EnvelopeFlags::PERSIST_IF_OFFLINE) {
            let reason = "persist-if-offline needs mailboxes, which this server does not have yet";
            return refuse(self, out, ErrorCode::UnsupportedFeature, reason);
        }
        let destination = env.destination();
        if matches!(destination, Destination::Service(_)) {
            return refuse(self, out, ErrorCode::InvalidDestination, "service destinations are not routed yet");
        }
        if !self.tokens.take(config.send_rate_per_sec, config.send_burst, now) {
            return refuse(self, out, ErrorCode::RateLimited, "send rate limit exceeded");
        }
        if !dedup.insert(user, id, now) {
            self.answers.resolve(sequence, Outcome::Duplicate);
            return Event::None;
        }
        Event::Route { sequence, id, destination, envelope, echo: flags.contains(EnvelopeFlags::ECHO_TO_SENDER) }
    }

    /// Records what became of send `sequence`: an outcome waits for
    /// [`flush_answers`](Self::flush_answers); an error is transmitted now.
    pub fn handle_outcome(
        &mut self,
        sequence: u64,
        id: EnvelopeId,
        result: Result<Outcome, (ErrorCode, &'static str)>,
        out: &mut impl Transmit,
    ) {
        match result {
            Ok(outcome) => self.answers.resolve(sequence, outcome),
            Err((code, reason)) => {
                if self.answers.resolve_silently(sequence) {
                    self.fail(out, code, Some(id), None, Some(sequence), reason);
                }
            }
        }
    }

    /// Transmits the outcomes known so far, in sequence order, as few
    /// [`Reply::Accepted`] items as there are runs of equal outcomes (one
    /// under a uniform load). Call once per read batch and once per batch
    /// of outcomes from other shards.
    pub fn flush_answers(&mut self, out: &mut impl Transmit) {
        self.answers.flush(out);
    }

    /// The shard could not add this connection to `room` (overloaded).
    pub fn join_failed(&mut self, room: &str) {
        self.rooms.retain(|r| **r != *room);
    }

    /// Admits a delivery of `len` bytes to the outbound queue, which holds
    /// `queued` frames of `queued_bytes` now; false if over the bound (the
    /// connection then counts as slow). An admitted delivery takes the next
    /// delivery sequence number and stays counted until acknowledged.
    pub fn admit_delivery(
        &mut self,
        config: &SessionConfig,
        len: usize,
        queued: usize,
        queued_bytes: usize,
        now: Instant,
    ) -> bool {
        let d = &mut self.deliveries;
        let frames = queued + d.unacked.len();
        let bytes = queued_bytes + d.unacked_bytes;
        if frames >= config.outbound_frames || bytes + len > config.outbound_bytes {
            self.slow_since.get_or_insert(now);
            return false;
        }
        d.delivered += 1;
        d.unacked.push_back(len as u32);
        d.unacked_bytes += len;
        true
    }

    /// Deliveries admitted and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.deliveries.unacked.len()
    }

    /// Checks the timers at `now`, given the outbound queue's size.
    pub fn handle_timeout(
        &mut self,
        config: &SessionConfig,
        now: Instant,
        queued: usize,
        queued_bytes: usize,
    ) -> Timeout {
        if self.expires.is_some_and(|at| now >= at) {
            return Timeout::Close(ErrorCode::TokenExpired, "token expired");
        }
        if let Some(since) = self.slow_since {
            // Cleared only once the backlog fell to half the bound, so a
            // queue that stays just under the bound (refusing every
            // delivery of a large envelope) still counts as slow.
            let frames = queued + self.deliveries.unacked.len();
            let bytes = queued_bytes + self.deliveries.unacked_bytes;
            if frames <= config.outbound_frames / 2 && bytes <= config.outbound_bytes / 2 {
                self.slow_since = None;
            } else if now.saturating_duration_since(since) >= config.slow_consumer_grace {
                return Timeout::Close(ErrorCode::SlowConsumer, "did not read or acknowledge deliveries in time");
            }
        }
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= config.idle_timeout {
            Timeout::Close(ErrorCode::IdleTimeout, "no traffic")
        } else if silent >= config.ping_interval && !self.pinged {
            self.pinged = true;
            Timeout::Ping
        } else {
            Timeout::None
        }
    }

    /// Transmits an error (and closes when it is fatal).
    fn fail(
        &mut self,
        out: &mut impl Transmit,
        code: ErrorCode,
        id: Option<EnvelopeId>,
        request_id: Option<u32>,
        sequence: Option<u64>,
        reason: &'static str,
    ) {
        if code.is_fatal() {
            // Nothing goes out after the close: answer what is known first.
            self.flush_answers(out);
        }
        out.reply(Reply::error(code, id, request_id, sequence, reason));
        if code.is_fatal() {
            self.closing = true;
            out.close(code, reason);
        }
    }
}

fn frame_reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::FrameTooLarge => "frame too large",
        ErrorCode::UnsupportedVersion => "unsupported protocol version",
        ErrorCode::UnknownFrameType => "unknown frame type",
        ErrorCode::InvalidDestination => "invalid room or user name",
        _ => "malformed frame",
    }
}

/// The state of one send between its sequence number and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Routed, outcome not known yet.
    Waiting,
    /// As `Waiting`, for a send that asked for no answer.
    WaitingSilent,
    /// Outcome known, not yet transmitted.
    Done(Outcome),
    /// Needs no `accepted` (answered by an error, or asked for no answer).
    Silent,
}

/// Send sequence numbers and the outcomes not yet transmitted.
#[derive(Debug, Default)]
struct Answers {
    /// The last sequence number given out.
    last: u64,
    /// Every send up to this one has been answered.
    flushed: u64,
    /// Slots of sends `flushed + 1 ..= last`.
    pending: VecDeque<Slot>,
}

impl Answers {
    fn assign(&mut self, no_answer: bool) -> u64 {
        self.last += 1;
        self.pending.push_back(if no_answer { Slot::WaitingSilent } else { Slot::Waiting });
        self.last
    }

    fn slot(&mut self, sequence: u64) -> Option<&mut Slot> {
        let i = sequence.checked_sub(self.flushed + 1)?;
        self.pending.get_mut(usize::try_from(i).ok()?)
    }

    fn resolve(&mut self, sequence: u64, outcome: Outcome) {
        if let Some(slot) = self.slot(sequence) {
            *slot = match *slot {
                Slot::Waiting => Slot::Done(outcome),
                _ => Slot::Silent,
            };
        }
    }

    /// Marks a send as needing no `accepted`; true if it wanted an answer
    /// (so an error should be transmitted).
    fn resolve_silently(&mut self, sequence: u64) -> bool {
        match self.slot(sequence) {
            Some(slot) => std::mem::replace(slot, Slot::Silent) == Slot::Waiting,
            None => false,
        }
    }

    fn flush(&mut self, out: &mut impl Transmit) {
        let mut run: Option<Confirm> = None;
        while let Some(&slot) = self.pending.front() {
            let outcome = match slot {
                Slot::Waiting | Slot::WaitingSilent => break,
                Slot::Done(o) => Some(o),
                Slot::Silent => None,
            };
            self.pending.pop_front();
            self.flushed += 1;
            match (&mut run, outcome) {
                (Some(r), Some(o)) if r.outcome != o => {
                    out.reply(Reply::Accepted(*r));
                    *r = Confirm { through: self.flushed, outcome: o };
                }
                (Some(r), _) => r.through = self.flushed,
                (None, Some(o)) => run = Some(Confirm { through: self.flushed, outcome: o }),
                (None, None) => {}
            }
        }
        if let Some(r) = run {
            out.reply(Reply::Accepted(r));
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            self.pending = VecDeque::new();
        }
    }
}

/// Delivery sequence numbers and the deliveries not yet acknowledged.
#[derive(Debug, Default)]
struct Deliveries {
    /// The last delivery sequence number given out.
    delivered: u64,
    /// Every delivery up to this one was acknowledged.
    acked: u64,
    /// Lengths of deliveries `acked + 1 ..= delivered`.
    unacked: VecDeque<u32>,
    unacked_bytes: usize,
}

impl Deliveries {
    /// Acknowledges every delivery up to `through`; false if `through` is
    /// beyond the last delivery.
    fn ack(&mut self, through: u64) -> bool {
        if through > self.delivered {
            return false;
        }
        while self.acked < through {
            self.acked += 1;
            self.unacked_bytes -= self.unacked.pop_front().map_or(0, |l| l as usize);
        }
        if self.unacked.is_empty() && self.unacked.capacity() > 64 {
            self.unacked = VecDeque::new();
        }
        true
    }
}

/// Per-connection send rate limit.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    // The rate and the burst come from the configuration at each call: a
    // session is kept small, and every connection has one.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst.max(1)), last: now }
    }

    /// Takes one token, refilled at `rate_per_sec` up to `burst`; false if
    /// the bucket is empty. Rate 0 = unlimited.
    pub fn take(&mut self, rate_per_sec: u32, burst: u32, now: Instant) -> bool {
        if rate_per_sec == 0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(rate_per_sec)).min(f64::from(burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

mod dedup;
pub use dedup::Dedup;

/// If `frame` is a `send` frame, starts loading its de-duplication slot
/// ([`Dedup::prefetch`]): for a frontend that decodes the next frame of a
/// read batch before it hands in the current one. Checks nothing.
pub fn prefetch_send<S: BuildHasher>(frame: &[u8], user: &str, dedup: &Dedup<S>) {
    if frame.get(1) == Some(&(FrameType::Send as u8))
        && let Some(id) = frame.get(crate::frame::FRAME_HEADER_LEN..).and_then(Envelope::peek_id)
    {
        dedup.prefetch(user, id);
    }
}

#[cfg(test)]
mod tests;
