//! Switchboard over WebSocket, protocol 1.1: `send` frames out; `accepted`,
//! `error` and `deliver` frames in; one cumulative `delivery-ack` per read
//! batch. For fan-out every receiver joins one room (`join-room`, awaiting
//! `done`) during its handshake.
//!
//! Answers: every `send` a connection writes has an implicit sequence
//! number (the first is 1), and the loadtest asks for an answer to each (no
//! `no-answer` flag). The server answers in batches: an `accepted` entry
//! `(through, outcome)` answers every send up to `through` that has no
//! answer yet, and a failed send is answered at once by an `error` naming
//! its sequence (always before the entry that covers it). The accounting
//! matches answers by envelope id, so each connection keeps the ids of its
//! unanswered sends in send order ([`WsConn`]) and turns every entry and
//! error back into one [`Inbound::Answer`] per send. An answer for a send
//! never written, or a second answer for one, is a protocol violation.
//!
//! Acks: the server counts unacknowledged deliveries against the
//! connection's outbound bound, so every [`Protocol::decode`] call that
//! consumed a `deliver` ends by acknowledging all deliveries so far (the
//! n-th `deliver` on a connection is delivery n) with one `delivery-ack`.
//!
//! The WebSocket side is [`super::ws`]'s; one frame per message (the
//! server does not fragment, so a fragment is a violation here).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_protocol::frame::{ErrorFrame, FRAME_HEADER_LEN, SEND_HEADER};
use switchboard_protocol::{Confirm, ErrorCode, Frame, Limits, Outcome, RoomName};

use super::ws::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, client_header, server_frame};
use super::{Connected, Inbound, ProtoError, Protocol, Role, read_until, tcp_connect, write_all};
use crate::accounting::Answer;
use crate::message::{Layout, receiver_user, sender_user};

/// Unanswered sends an offline connection (`loadtest sink`, where nothing
/// answers) remembers; the oldest is forgotten beyond it, so the sink pays
/// the same per-send bookkeeping as a live sender without growing.
const OFFLINE_PENDING: usize = 1 << 16;

/// The Switchboard target.
#[derive(Debug)]
pub struct Switchboard {
    addr: SocketAddr,
    host: String,
    path: String,
    secret: Vec<u8>,
    issuer: String,
    audience: String,
    layout: Layout,
    room: Option<String>,
}

/// One WebSocket connection's state.
///
/// The send side sits in cells because [`Protocol::encode_message`] takes
/// the state by shared reference (the trait's signature, shared with targets
/// that keep no send state); [`Protocol::decode`] has it exclusively and
/// reaches in with `get_mut`, without runtime borrow checks.
#[derive(Debug)]
pub struct WsConn {
    id_off: usize,
    limits: Limits,
    /// Send frames written: the last send sequence number given out.
    sent: Cell<u64>,
    /// Sends `sent - len + 1 ..= sent`, oldest first: the first has no
    /// answer yet (answered ones are popped from the front).
    pending: RefCell<VecDeque<Pending>>,
    /// No server will answer (`offline_conn`): bound `pending`.
    offline: bool,
    /// `deliver` frames received: the last delivery sequence number.
    delivered: u64,
    /// The last delivery sequence number acknowledged.
    acked: u64,
}

/// A send awaiting its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// The envelope id, as the accounting matches answers by it.
    id: Option<[u8; 16]>,
    /// Answered by an `error` already; the `accepted` entry covering it
    /// must not answer it again.
    answered: bool,
}

impl Switchboard {
    /// A target at `addr` (`host`/`path` go into the upgrade request) that
    /// signs HS256 tokens with `secret` for the run's users.
    pub fn new(
        addr: SocketAddr,
        host: String,
        path: String,
        secret: Vec<u8>,
        issuer: String,
        audience: String,
        layout: Layout,
    ) -> Self {
        Self { addr, host, path, secret, issuer, audience, layout, room: None }
    }

    /// The same target where every receiver joins `room` (fan-out).
    pub fn with_room(self, room: String) -> Self {
        Self { room: Some(room), ..self }
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            iss: &'a str,
            aud: &'a str,
            iat: u64,
            nbf: u64,
            exp: u64,
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?.as_secs();
        let claims =
            Claims { sub: user, iss: &self.issuer, aud: &self.audience, iat: now, nbf: now, exp: now + 24 * 3600 };
        let key = jsonwebtoken::EncodingKey::from_secret(&self.secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
            .context("signing a token")
    }
}

impl Protocol for Switchboard {
    type Conn = WsConn;
    const ANSWERS: bool = true;
    const GOODBYE: &'static [u8] = ws::CLOSE;

    fn offline_conn(&self, _pair: usize) -> WsConn {
        WsConn::new(self.layout.id_off, true)
    }

    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<WsConn>> {
        let user = match role {
            Role::Sender => sender_user(pair),
            Role::Receiver => receiver_user(pair),
            Role::Idle => format!("lt-i-{pair:06}"),
        };
        let token = self.token(&user)?;
        let mut stream = tcp_connect(self.addr, timeout)?;
        let headers = format!("Sec-WebSocket-Protocol: switchboard.v1\r\nAuthorization: Bearer {token}\r\n");
        let mut buf =
            ws::upgrade(&mut stream, &self.host, &self.path, &headers, timeout).with_context(|| user.clone())?;
        if let (Role::Receiver, Some(room)) = (role, &self.room) {
            let join = Frame::JoinRoom { request_id: 1, room: RoomName::parse(room).context("room name")? };
            let mut out = Vec::new();
            client_header(&mut out, join.encoded_len(), OP_BINARY);
            join.encode(&mut out);
            write_all(&mut stream, &out)?;
            let limits = Limits::default();
            let mut done = 0..0;
            read_until(&mut stream, &mut buf, timeout, |b| {
                Ok(joined(b, &limits)?.map(|frame| {
                    let end = frame.end;
                    done = frame;
                    end
                }))
            })
            .with_context(|| format!("{user}: joining room {room}"))?;
            // Only the `done` is the handshake's: a delivery or ping that
            // came first is left for `decode`, so that it is counted (and
            // acknowledged, which the delivery sequence relies on).
            buf.drain(done);
        }
        Ok(Connected { stream, conn: WsConn::new(self.layout.id_off, false), leftover: buf })
    }

    fn encode_message(conn: &WsConn, out: &mut Vec<u8>, msg: &[u8]) {
        client_header(out, FRAME_HEADER_LEN + msg.len(), OP_BINARY);
        out.extend_from_slice(&SEND_HEADER);
        out.extend_from_slice(msg);
        conn.sent.set(conn.sent.get() + 1);
        let id = msg.get(conn.id_off..).and_then(|b| b.first_chunk::<16>()).copied();
        // Never borrowed elsewhere: `decode` holds `&mut WsConn` and uses
        // `get_mut`, so this borrow cannot overlap another.
        let mut pending = conn.pending.borrow_mut();
        if conn.offline && pending.len() >= OFFLINE_PENDING {
            pending.pop_front();
        }
        pending.push_back(Pending { id, answered: false });
    }

    fn decode(
        conn: &mut WsConn,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while let Some(f) = server_frame(&buf[pos..])? {
            if !f.fin {
                return Err(ProtoError::Violation("fragmented frame from the server".into()));
            }
            let payload = &buf[pos + f.payload.start..pos + f.payload.end];
            pos += f.payload.end;
            match f.opcode {
                OP_BINARY => conn.handle_frame(payload, out, on)?,
                OP_PING => {
                    client_header(out, payload.len(), OP_PONG);
                    out.extend_from_slice(payload);
                }
                OP_PONG => {}
                OP_CLOSE => return Err(ws::closed(payload)),
                other => return Err(ProtoError::Violation(format!("unexpected WebSocket opcode {other:#x}"))),
            }
        }
        conn.acknowledge(out);
        Ok(pos)
    }
}

/// Where the `done` that answers join request 1 lies in the server frames
/// of `buf`; `None` until it arrived.
fn joined(buf: &[u8], limits: &Limits) -> anyhow::Result<Option<Range<usize>>> {
    let mut pos = 0;
    while let Some(f) = server_frame(&buf[pos..])? {
        let start = pos;
        let payload = &buf[pos + f.payload.start..pos + f.payload.end];
        pos += f.payload.end;
        match f.opcode {
            OP_BINARY => {}
            OP_CLOSE => return Err(ws::closed(payload).into()),
            _ => continue,
        }
        match Frame::decode(payload, limits)? {
            Frame::Done { request_id: 1 } => return Ok(Some(start..pos)),
            Frame::Error(e) => bail!("the server refused to join: code {} {}", e.code, e.reason),
            _ => {}
        }
    }
    Ok(None)
}

impl WsConn {
    /// A connection's state before its first send; `offline` if nothing
    /// will ever answer it.
    fn new(id_off: usize, offline: bool) -> Self {
        Self {
            id_off,
            limits: Limits::default().with_max_envelope_len(switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING),
            sent: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
            offline,
            delivered: 0,
            acked: 0,
        }
    }

    fn handle_frame(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<(), ProtoError> {
        let frame = Frame::decode(payload, &self.limits).map_err(|e| ProtoError::Violation(e.to_string()))?;
        match frame {
            Frame::Deliver { envelope, .. } => {
                self.delivered += 1;
                on(Inbound::Message(envelope));
            }
            Frame::Accepted(confirms) => {
                for c in confirms.iter() {
                    self.handle_confirm(c, on)?;
                }
            }
            Frame::Error(e) => self.handle_error(&e, on)?,
            Frame::Ping { nonce } => {
                let pong = Frame::Pong { nonce };
                client_header(out, pong.encoded_len(), OP_BINARY);
                pong.encode(out);
            }
            _ => {}
        }
        Ok(())
    }

    /// One `accepted` entry: answers every unanswered send up to
    /// `c.through` with its outcome.
    fn handle_confirm(&mut self, c: Confirm, on: &mut impl FnMut(Inbound<'_>)) -> Result<(), ProtoError> {
        let sent = self.sent.get();
        if c.through > sent {
            return Err(ProtoError::Violation(format!("accepted through send {}, only {sent} were sent", c.through)));
        }
        let answer = match c.outcome {
            Outcome::RecipientOffline => Answer::Offline,
            // Delivered, stored, or a duplicate of an accepted envelope.
            _ => Answer::Accepted,
        };
        let mut seq = self.first_pending();
        let pending = self.pending.get_mut();
        while seq <= c.through {
            let Some(p) = pending.pop_front() else { break };
            if !p.answered {
                on(Inbound::Answer { id: p.id, answer, code: None });
            }
            seq += 1;
        }
        self.pop_answered();
        Ok(())
    }

    /// An `error`: answers the send it names. An error that names no send
    /// is a connection-level failure (the server closes after a fatal one)
    /// or a request this client never made.
    fn handle_error(&mut self, e: &ErrorFrame<'_>, on: &mut impl FnMut(Inbound<'_>)) -> Result<(), ProtoError> {
        let name = e.error_code().map_or("unknown", ErrorCode::name);
        let Some(seq) = e.sequence else {
            let what = format!("error {} ({name}): {}", e.code, e.reason);
            return Err(if e.error_code().is_some_and(ErrorCode::is_fatal) {
                ProtoError::Closed(what)
            } else {
                ProtoError::Violation(format!("{what}, answering no send"))
            });
        };
        let first = self.first_pending();
        let sent = self.sent.get();
        let slot = seq.checked_sub(first).and_then(|i| usize::try_from(i).ok());
        match slot.and_then(|i| self.pending.get_mut().get_mut(i)) {
            Some(p) if !p.answered => {
                p.answered = true;
                let id = p.id.or(e.envelope_id.map(|id| id.0));
                on(Inbound::Answer { id, answer: Answer::Rejected, code: Some(e.code) });
            }
            _ => {
                let why = if seq > sent { "was never sent" } else { "was answered before" };
                return Err(ProtoError::Violation(format!("error {} ({name}) for send {seq}, which {why}", e.code)));
            }
        }
        self.pop_answered();
        Ok(())
    }

    /// The sequence number of the oldest send without an answer.
    fn first_pending(&mut self) -> u64 {
        // Every entry was pushed with one increment of `sent`.
        self.sent.get() - self.pending.get_mut().len() as u64 + 1
    }

    /// Drops sends answered by an error from the front, so that the queue
    /// holds no more than the unanswered span.
    fn pop_answered(&mut self) {
        let pending = self.pending.get_mut();
        while pending.front().is_some_and(|p| p.answered) {
            pending.pop_front();
        }
    }

    /// Appends one `delivery-ack` for every delivery so far, if there are
    /// new ones since the last.
    fn acknowledge(&mut self, out: &mut Vec<u8>) {
        if self.delivered > self.acked {
            let ack = Frame::DeliveryAck { through: self.delivered };
            client_header(out, ack.encoded_len(), OP_BINARY);
            ack.encode(out);
            self.acked = self.delivered;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `decode` passed on, owned.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Message(Vec<u8>),
        Answer(Option<[u8; 16]>, Answer, Option<u16>),
    }

    fn conn() -> WsConn {
        WsConn::new(0, false)
    }

    /// An unmasked server WebSocket binary frame carrying `payload`.
    fn ws(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x82, u8::try_from(payload.len()).expect("test frames are short")];
        f.extend_from_slice(payload);
        f
    }

    /// A 20-byte message whose id (at offset 0) is sixteen `n`s.
    fn message(n: u8) -> Vec<u8> {
        let mut m = vec![n; 16];
        m.extend_from_slice(b"body");
        m
    }

    fn send(conn: &WsConn, n: u8) {
        Switchboard::encode_message(conn, &mut Vec::new(), &message(n));
    }

    fn decode(conn: &mut WsConn, buf: &[u8]) -> Result<(usize, Vec<Got>, Vec<u8>), ProtoError> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        let n = Switchboard::decode(conn, buf, &mut out, &mut |i| {
            got.push(match i {
                Inbound::Message(m) => Got::Message(m.to_vec()),
                Inbound::Answer { id, answer, code } => Got::Answer(id, answer, code),
            })
        })?;
        Ok((n, got, out))
    }

    /// An `error` frame with code `code` for send `seq` of envelope `[n; 16]`.
    fn error(code: u16, seq: u8, n: u8) -> Vec<u8> {
        let mut f = vec![1, 5, 0b101, 0];
        f.extend_from_slice(&code.to_le_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // reserved, request id
        f.extend_from_slice(&[seq, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[n; 16]);
        f.extend_from_slice(b"no");
        ws(&f)
    }

    const ACK_HEADER: [u8; 6] = [0x82, 0x80 | 12, 0, 0, 0, 0];

    #[test]
    fn accepted_entries_and_errors_answer_each_send_once() {
        let mut c = conn();
        for n in 1..=5 {
            send(&c, n);
        }
        // Send 2 rate-limited (400), then one `accepted` with two entries:
        // through 3 delivered, through 4 recipient-offline.
        let mut buf = error(400, 2, 2);
        buf.extend_from_slice(&ws(&[
            1, 2, 0, 0, //
            3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
        ]));
        let (n, got, out) = decode(&mut c, &buf).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(
            got,
            [
                Got::Answer(Some([2; 16]), Answer::Rejected, Some(400)),
                Got::Answer(Some([1; 16]), Answer::Accepted, None),
                Got::Answer(Some([3; 16]), Answer::Accepted, None),
                Got::Answer(Some([4; 16]), Answer::Offline, None),
            ]
        );
        assert!(out.is_empty(), "no deliveries, no ack");
        assert_eq!(c.pending.get_mut().len(), 1, "send 5 is unanswered");

        // Send 5 fails at the front of the queue, which empties; the next
        // entry (stored) answers send 6 only.
        send(&c, 6);
        let mut buf = error(204, 5, 5);
        buf.extend_from_slice(&ws(&[1, 2, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]));
        let (_, got, _) = decode(&mut c, &buf).unwrap();
        assert_eq!(
            got,
            [
                Got::Answer(Some([5; 16]), Answer::Rejected, Some(204)),
                Got::Answer(Some([6; 16]), Answer::Accepted, None),
            ]
        );
        assert!(c.pending.get_mut().is_empty());
    }

    #[test]
    fn answers_to_sends_never_made_or_answered_twice_are_violations() {
        let mut c = conn();
        send(&c, 1);
        let beyond = ws(&[1, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode(&mut c, &beyond), Err(ProtoError::Violation(_))));

        let mut c = conn();
        send(&c, 1);
        send(&c, 2);
        decode(&mut c, &error(400, 2, 2)).unwrap();
        assert!(matches!(decode(&mut c, &error(400, 2, 2)), Err(ProtoError::Violation(_))));
        assert!(matches!(decode(&mut c, &error(400, 3, 3)), Err(ProtoError::Violation(_))));

        // slow-consumer (402, fatal) names no send: the connection is over.
        let mut slow = vec![1, 5, 0, 0, 0x92, 0x01];
        slow.extend_from_slice(&[0; 30]);
        let err = decode(&mut c, &ws(&slow)).unwrap_err();
        assert_eq!(err, ProtoError::Closed("error 402 (slow-consumer): ".into()));
    }

    #[test]
    fn deliveries_are_acknowledged_cumulatively_once_per_batch() {
        // Deliver frames whose "envelope" is a message (the decoder does
        // not verify envelopes).
        let deliver = |n| {
            let mut f = vec![1, 3, 0, 0];
            f.extend_from_slice(&message(n));
            ws(&f)
        };
        let mut c = conn();
        let mut buf: Vec<u8> = (1..=3).flat_map(deliver).collect();
        let complete = buf.len();
        buf.extend_from_slice(&[0x82, 10]); // an incomplete next frame
        let (n, got, out) = decode(&mut c, &buf).unwrap();
        assert_eq!(n, complete);
        assert_eq!(got, (1..=3).map(|n| Got::Message(message(n))).collect::<Vec<_>>());
        let mut want = ACK_HEADER.to_vec();
        want.extend_from_slice(&[1, 4, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out, want, "one ack, through delivery 3");

        // A batch without deliveries acknowledges nothing again.
        let (_, _, out) = decode(&mut c, &[0x89, 0]).unwrap();
        assert_eq!(out, [0x8a, 0x80, 0, 0, 0, 0], "only the pong");

        let (_, _, out) = decode(&mut c, &deliver(4)).unwrap();
        let mut want = ACK_HEADER.to_vec();
        want.extend_from_slice(&[1, 4, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn answers_pings_and_closes() {
        let mut c = conn();
        send(&c, 9);
        let mut buf = ws(&[1, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]); // through 1 recipient-offline
        buf.extend_from_slice(&[0x89, 2, b'h', b'i']); // WebSocket ping
        let (n, got, out) = decode(&mut c, &buf).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(got, [Got::Answer(Some([9; 16]), Answer::Offline, None)]);
        assert_eq!(out, [0x8a, 0x82, 0, 0, 0, 0, b'h', b'i']);
        let close = [0x88, 4, 0x11, 0x32, b'x', b'y'];
        let err = decode(&mut c, &close).unwrap_err();
        assert_eq!(err, ProtoError::Closed("WebSocket close 4402 xy".into()));
    }

    #[test]
    fn an_offline_connection_remembers_a_bounded_number_of_sends() {
        let mut c = WsConn::new(0, true);
        let msg = message(1);
        let mut out = Vec::new();
        for _ in 0..OFFLINE_PENDING + 10 {
            Switchboard::encode_message(&c, &mut out, &msg);
            out.clear();
        }
        assert_eq!(c.sent.get(), OFFLINE_PENDING as u64 + 10);
        assert_eq!(c.pending.get_mut().len(), OFFLINE_PENDING);
    }

    #[test]
    fn the_join_handshake_takes_only_its_done() {
        let mut deliver = vec![1, 3, 0, 0];
        deliver.extend_from_slice(&message(1));
        let mut buf = ws(&deliver);
        let start = buf.len();
        buf.extend_from_slice(&ws(&[1, 8, 0, 0, 1, 0, 0, 0])); // done, request 1
        let end = buf.len();
        let limits = Limits::default();
        assert_eq!(joined(&buf[..end - 1], &limits).unwrap(), None);
        buf.extend_from_slice(&[0x89, 0]);
        assert_eq!(joined(&buf, &limits).unwrap(), Some(start..end));
    }
}
