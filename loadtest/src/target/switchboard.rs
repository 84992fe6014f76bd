//! Switchboard over WebSocket: `send` frames out, `accepted`/`error`
//! answers and `deliver` frames in, a `delivery-ack` for every delivery.
//! For fan-out every receiver joins one room (`join-room`, awaiting `done`)
//! during its handshake.
//!
//! A minimal client side of RFC 6455, enough for a well-behaved server:
//! one frame per message (the server does not fragment), client frames
//! masked with the all-zero key (legal, and it makes masking free for the
//! generator; the server still runs its unmasking pass). The upgrade
//! answer's `Sec-WebSocket-Accept` is not checked: the target is our own
//! server on loopback, and the 101 status is.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_protocol::frame::{FRAME_HEADER_LEN, SEND_HEADER};
use switchboard_protocol::{EnvelopeId, Frame, Limits, Outcome, RoomName};

use super::{Connected, Inbound, ProtoError, Protocol, Role, find, read_until, tcp_connect, write_all};
use crate::accounting::Answer;
use crate::message::{Layout, receiver_user, sender_user};

/// Longest client frame header: 2 + 8 (length) + 4 (mask).
const MAX_CLIENT_HEADER: usize = 14;

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
#[derive(Debug)]
pub struct WsConn {
    id_off: usize,
    limits: Limits,
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

    fn conn_state(&self) -> WsConn {
        WsConn {
            id_off: self.layout.id_off,
            limits: Limits::default().with_max_envelope_len(switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING),
        }
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
    /// A masked (zero key) close frame without a status.
    const GOODBYE: &'static [u8] = &[0x80 | OP_CLOSE, 0x80, 0, 0, 0, 0];

    fn offline_conn(&self, _pair: usize) -> WsConn {
        self.conn_state()
    }

    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<WsConn>> {
        let user = match role {
            Role::Sender => sender_user(pair),
            Role::Receiver => receiver_user(pair),
            Role::Idle => format!("lt-i-{pair:06}"),
        };
        let token = self.token(&user)?;
        let mut stream = tcp_connect(self.addr, timeout)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: switchboard.v1\r\nAuthorization: Bearer {}\r\n\r\n",
            self.path, self.host, token
        );
        write_all(&mut stream, request.as_bytes())?;
        let mut buf = Vec::new();
        let end = read_until(&mut stream, &mut buf, timeout, |b| Ok(find(b, b"\r\n\r\n").map(|i| i + 4)))?;
        let status = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        if !status.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end]);
            bail!("{user}: the server refused the upgrade: {}", head.lines().next().unwrap_or_default());
        }
        buf.drain(..end);
        if let (Role::Receiver, Some(room)) = (role, &self.room) {
            let join = Frame::JoinRoom { request_id: 1, room: RoomName::parse(room).context("room name")? };
            let mut out = Vec::new();
            client_header(&mut out, join.encoded_len(), OP_BINARY);
            join.encode(&mut out);
            write_all(&mut stream, &out)?;
            let limits = Limits::default();
            let end = read_until(&mut stream, &mut buf, timeout, |b| joined(b, &limits))
                .with_context(|| format!("{user}: joining room {room}"))?;
            buf.drain(..end);
        }
        Ok(Connected { stream, conn: self.conn_state(), leftover: buf })
    }

    fn encode_message(_conn: &WsConn, out: &mut Vec<u8>, msg: &[u8]) {
        client_header(out, FRAME_HEADER_LEN + msg.len(), OP_BINARY);
        out.extend_from_slice(&SEND_HEADER);
        out.extend_from_slice(msg);
    }

    fn decode(
        conn: &mut WsConn,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while let Some((opcode, payload, next)) = server_frame(&buf[pos..])? {
            let payload = &buf[pos + payload.start..pos + payload.end];
            pos += next;
            match opcode {
                OP_BINARY => handle_frame(conn, payload, out, on)?,
                OP_PING => {
                    client_header(out, payload.len(), OP_PONG);
                    out.extend_from_slice(payload);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let code = payload.first_chunk::<2>().map_or(1005, |c| u16::from_be_bytes(*c));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return Err(ProtoError::Closed(format!("WebSocket close {code} {reason}")));
                }
                other => return Err(ProtoError::Violation(format!("unexpected WebSocket opcode {other:#x}"))),
            }
        }
        Ok(pos)
    }
}

/// The length of the server frames up to and including the `done` that
/// answers join request 1; `None` until it arrived.
fn joined(buf: &[u8], limits: &Limits) -> anyhow::Result<Option<usize>> {
    let mut pos = 0;
    while let Some((opcode, payload, next)) = server_frame(&buf[pos..])? {
        let payload = &buf[pos + payload.start..pos + payload.end];
        pos += next;
        if opcode != OP_BINARY {
            continue;
        }
        match Frame::decode(payload, limits)? {
            Frame::Done { request_id: 1 } => return Ok(Some(pos)),
            Frame::Error(e) => bail!("the server refused to join: code {} {}", e.code, e.reason),
            _ => {}
        }
    }
    Ok(None)
}

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

fn handle_frame(
    conn: &mut WsConn,
    payload: &[u8],
    out: &mut Vec<u8>,
    on: &mut impl FnMut(Inbound<'_>),
) -> Result<(), ProtoError> {
    let frame = Frame::decode(payload, &conn.limits).map_err(|e| ProtoError::Violation(e.to_string()))?;
    match frame {
        Frame::Deliver { envelope, .. } => {
            if let Some(id) = envelope.get(conn.id_off..conn.id_off + 16) {
                let ack = Frame::DeliveryAck {
                    id: EnvelopeId::from_slice(id).map_err(|e| ProtoError::Violation(e.to_string()))?,
                };
                client_header(out, ack.encoded_len(), OP_BINARY);
                ack.encode(out);
            }
            on(Inbound::Message(envelope));
        }
        Frame::Accepted { id, outcome, .. } => {
            let answer = if outcome == Outcome::RecipientOffline { Answer::Offline } else { Answer::Accepted };
            on(Inbound::Answer { id: Some(id.0), answer, code: None });
        }
        Frame::Error(e) => {
            on(Inbound::Answer { id: e.envelope_id.map(|id| id.0), answer: Answer::Rejected, code: Some(e.code) })
        }
        Frame::Ping { nonce } => {
            let pong = Frame::Pong { nonce };
            client_header(out, pong.encoded_len(), OP_BINARY);
            pong.encode(out);
        }
        _ => {}
    }
    Ok(())
}

/// Appends the header of a final, masked (all-zero key) client frame.
fn client_header(out: &mut Vec<u8>, len: usize, opcode: u8) {
    let mut h = [0u8; MAX_CLIENT_HEADER];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = 0x80 | len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 0x80 | 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        h[1] = 0x80 | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    // The 4 mask bytes stay zero.
    out.extend_from_slice(&h[..n + 4]);
}

/// Parses one unmasked, final server frame from the front of `buf`:
/// `(opcode, payload range, frame length)`, or `None` if incomplete.
fn server_frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, ProtoError> {
    let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 {
        return Err(ProtoError::Violation("fragmented frame or reserved bits from the server".into()));
    }
    if b1 & 0x80 != 0 {
        return Err(ProtoError::Violation("masked frame from the server".into()));
    }
    let (len, start) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| ProtoError::Violation("frame too large".into()))?;
    let end = start + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((b0 & 0x0f, start..end, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> WsConn {
        WsConn { id_off: 0, limits: Limits::default() }
    }

    #[test]
    fn client_headers_are_masked_with_a_zero_key() {
        let mut out = Vec::new();
        client_header(&mut out, 5, OP_BINARY);
        assert_eq!(out, [0x82, 0x85, 0, 0, 0, 0]);
        out.clear();
        client_header(&mut out, 260, OP_BINARY);
        assert_eq!(out, [0x82, 0xfe, 0x01, 0x04, 0, 0, 0, 0]);
        out.clear();
        client_header(&mut out, 70_000, OP_PONG);
        assert_eq!(out, [0x8a, 0xff, 0, 0, 0, 0, 0, 1, 0x11, 0x70, 0, 0, 0, 0]);
    }

    #[test]
    fn deliveries_are_passed_on_and_acknowledged() {
        // A deliver frame whose "envelope" starts with its 16-byte id (the
        // decoder does not verify envelopes).
        let envelope: Vec<u8> = (1..=20).collect();
        let mut buf = vec![0x82, 24, 1, 3, 0, 0];
        buf.extend_from_slice(&envelope);
        buf.extend_from_slice(&[0x82, 10]); // an incomplete next frame
        let mut out = Vec::new();
        let mut got = Vec::new();
        let n = Switchboard::decode(&mut conn(), &buf, &mut out, &mut |i| {
            if let Inbound::Message(m) = i {
                got.push(m.to_vec());
            }
        })
        .unwrap();
        assert_eq!(n, 26);
        assert_eq!(got, std::slice::from_ref(&envelope));
        let mut want = vec![0x82, 0x94, 0, 0, 0, 0, 1, 4, 0, 0];
        want.extend_from_slice(&envelope[..16]);
        assert_eq!(out, want);
    }

    #[test]
    fn answers_pings_and_closes() {
        let id = [9u8; 16];
        let mut accepted = vec![0x82, 28, 1, 2, 0, 0];
        accepted.extend_from_slice(&id);
        accepted.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // recipient-offline, 0 recipients
        accepted.extend_from_slice(&[0x89, 2, b'h', b'i']); // WebSocket ping
        let mut out = Vec::new();
        let mut answers = Vec::new();
        let n = Switchboard::decode(&mut conn(), &accepted, &mut out, &mut |i| answers.push(format!("{i:?}"))).unwrap();
        assert_eq!(n, accepted.len());
        assert_eq!(answers.len(), 1);
        assert!(answers[0].contains("Offline"));
        assert_eq!(out, [0x8a, 0x82, 0, 0, 0, 0, b'h', b'i']);
        let close = [0x88, 4, 0x11, 0x32, b'x', b'y'];
        let err = Switchboard::decode(&mut conn(), &close, &mut out, &mut |_| {}).unwrap_err();
        assert_eq!(err, ProtoError::Closed("WebSocket close 4402 xy".into()));
    }
}
