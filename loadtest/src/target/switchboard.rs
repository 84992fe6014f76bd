//! Switchboard over WebSocket: `send` frames out, `accepted`/`error`
//! answers and `deliver` frames in, a `delivery-ack` for every delivery.
//! For fan-out every receiver joins one room (`join-room`, awaiting `done`)
//! during its handshake.
//!
//! The WebSocket side is [`super::ws`]'s; one frame per message (the
//! server does not fragment, so a fragment is a violation here).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_protocol::frame::{FRAME_HEADER_LEN, SEND_HEADER};
use switchboard_protocol::{EnvelopeId, Frame, Limits, Outcome, RoomName};

use super::ws::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, client_header, server_frame};
use super::{Connected, Inbound, ProtoError, Protocol, Role, read_until, tcp_connect, write_all};
use crate::accounting::Answer;
use crate::message::{Layout, receiver_user, sender_user};

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
    const GOODBYE: &'static [u8] = ws::CLOSE;

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
        while let Some(f) = server_frame(&buf[pos..])? {
            if !f.fin {
                return Err(ProtoError::Violation("fragmented frame from the server".into()));
            }
            let payload = &buf[pos + f.payload.start..pos + f.payload.end];
            pos += f.payload.end;
            match f.opcode {
                OP_BINARY => handle_frame(conn, payload, out, on)?,
                OP_PING => {
                    client_header(out, payload.len(), OP_PONG);
                    out.extend_from_slice(payload);
                }
                OP_PONG => {}
                OP_CLOSE => return Err(ws::closed(payload)),
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
    while let Some(f) = server_frame(&buf[pos..])? {
        let payload = &buf[pos + f.payload.start..pos + f.payload.end];
        pos += f.payload.end;
        if f.opcode != OP_BINARY {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> WsConn {
        WsConn { id_off: 0, limits: Limits::default() }
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
