//! Mosquitto (any MQTT 3.1.1 broker) over TCP: each receiver subscribes at
//! QoS 0 to its own topic `lt/<nonce>/<pair>` (fan-out: every receiver to
//! `lt/<nonce>/all`), each sender publishes there at QoS 0. QoS 0 has no answers, so the closed loop counts receipts.
//!
//! The few packets needed (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH,
//! PINGRESP) are written by hand from the 3.1.1 specification: the
//! maintained codec (`rumqttc`'s `mqttbytes` module) comes with tokio and
//! allocates a topic `String` and a `Bytes` per PUBLISH, and the standalone
//! `mqttbytes` crate is unmaintained. Encoding a QoS 0 PUBLISH into the
//! write buffer and slicing the payload out of the read buffer allocate
//! nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure};

use super::ws::Tunneled;
use super::{Connected, HandshakeIo, Inbound, ProtoError, Protocol, Role, Topology, tcp_connect};

/// The Mosquitto target.
#[derive(Debug)]
pub struct Mqtt {
    addr: SocketAddr,
    nonce: u32,
    topology: Topology,
}

/// One MQTT connection's state: the topic it publishes to.
#[derive(Debug)]
pub struct MqttConn {
    topic: Vec<u8>,
}

impl Mqtt {
    /// A broker at `addr`; `nonce` keeps this run's topics apart.
    pub fn new(addr: SocketAddr, nonce: u32) -> Self {
        Self { addr, nonce, topology: Topology::Pairs }
    }

    /// The same broker with every message on one topic (fan-out).
    pub fn with_topology(self, topology: Topology) -> Self {
        Self { topology, ..self }
    }

    fn topic(&self, pair: usize) -> Vec<u8> {
        match self.topology {
            Topology::Pairs => format!("lt/{:08x}/{pair:06}", self.nonce).into_bytes(),
            Topology::Fanout => format!("lt/{:08x}/all", self.nonce).into_bytes(),
        }
    }
}

impl Protocol for Mqtt {
    type Conn = MqttConn;
    const ANSWERS: bool = false;
    const GOODBYE: &'static [u8] = &[0xe0, 0x00];

    fn offline_conn(&self, pair: usize) -> MqttConn {
        MqttConn { topic: self.topic(pair) }
    }

    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<MqttConn>> {
        let mut stream = tcp_connect(self.addr, timeout)?;
        let (conn, leftover) = self.handshake(&mut stream, pair, role, timeout)?;
        Ok(Connected { stream, conn, leftover })
    }

    fn retarget(conn: &mut MqttConn, user: usize) {
        let n = conn.topic.len();
        crate::message::put_digits6(&mut conn.topic[n - 6..], user);
    }

    fn encode_message(conn: &MqttConn, out: &mut Vec<u8>, msg: &[u8]) {
        packet_header(out, 0x30, 2 + conn.topic.len() + msg.len());
        put_str(out, &conn.topic);
        out.extend_from_slice(msg);
    }

    fn decode(
        _conn: &mut MqttConn,
        buf: &[u8],
        _out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            let Some(&first) = rest.first() else { break };
            let Some((len, hdr)) = remaining_length(&rest[1..])? else { break };
            let end = 1 + hdr + len;
            let Some(body) = rest.get(1 + hdr..end) else { break };
            match first >> 4 {
                3 => {
                    let qos = (first >> 1) & 3;
                    let topic_len = body
                        .first_chunk::<2>()
                        .map(|b| usize::from(u16::from_be_bytes(*b)))
                        .ok_or_else(|| ProtoError::Violation("PUBLISH without a topic".into()))?;
                    let start = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                    let payload = body
                        .get(start..)
                        .ok_or_else(|| ProtoError::Violation("PUBLISH shorter than its topic".into()))?;
                    on(Inbound::Message(payload));
                }
                13 => {} // PINGRESP
                14 => return Err(ProtoError::Closed("MQTT DISCONNECT".into())),
                t => return Err(ProtoError::Violation(format!("unexpected MQTT packet type {t}"))),
            }
            pos += end;
        }
        Ok(pos)
    }
}

/// MQTT over WebSocket: Mosquitto's `protocol websockets` listener, one
/// packet per binary frame, subprotocol `mqtt` (MQTT 3.1.1 §6).
impl Tunneled for Mqtt {
    const SUBPROTOCOL: Option<&'static str> = Some("mqtt");
    /// Paho's JavaScript client sends each packet with one `send`: a frame.
    const FRAME_PER_TURN: bool = false;

    fn handshake(
        &self,
        io: &mut impl HandshakeIo,
        pair: usize,
        role: Role,
        timeout: Duration,
    ) -> anyhow::Result<(MqttConn, Vec<u8>)> {
        let kind = match role {
            Role::Sender => 's',
            Role::Receiver => 'r',
            Role::Idle => 'i',
        };
        let client_id = format!("lt-{:08x}-{kind}-{pair:06}", self.nonce);
        // CONNECT: protocol "MQTT" level 4, clean session, keep-alive off
        // (a receiver sends nothing during a run).
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
        put_str(&mut body, client_id.as_bytes());
        let mut packet = Vec::new();
        packet_header(&mut packet, 0x10, body.len());
        packet.extend_from_slice(&body);
        io.send(&packet)?;
        let mut buf = Vec::new();
        io.read_until(&mut buf, timeout, |b| Ok((b.len() >= 4).then_some(4)))?;
        ensure!(buf[..2] == [0x20, 2], "{client_id}: expected CONNACK, got {:02x?}", &buf[..4]);
        ensure!(buf[3] == 0, "{client_id}: the broker refused the connection (CONNACK code {})", buf[3]);
        let topic = self.topic(pair);
        if role == Role::Receiver {
            // SUBSCRIBE packet id 1, the topic at QoS 0; SUBACK 90 03 00 01 00.
            let mut body = vec![0, 1];
            put_str(&mut body, &topic);
            body.push(0);
            packet.clear();
            packet_header(&mut packet, 0x82, body.len());
            packet.extend_from_slice(&body);
            io.send(&packet)?;
            io.read_until(&mut buf, timeout, |b| Ok((b.len() >= 9).then_some(9)))?;
            if buf[4..9] != [0x90, 3, 0, 1, 0] {
                bail!("{client_id}: subscription refused: {:02x?}", &buf[4..9]);
            }
        }
        let used = if role == Role::Receiver { 9 } else { 4 };
        Ok((MqttConn { topic }, buf.split_off(used)))
    }

    fn message_len(conn: &MqttConn, msg_len: usize) -> usize {
        let body = 2 + conn.topic.len() + msg_len;
        1 + remaining_length_len(body) + body
    }
}

/// How many bytes the remaining length `len` takes.
fn remaining_length_len(len: usize) -> usize {
    match len {
        0..128 => 1,
        128..16_384 => 2,
        16_384..2_097_152 => 3,
        _ => 4,
    }
}

/// Appends a fixed header: the first byte and the remaining length.
fn packet_header(out: &mut Vec<u8>, first: u8, mut len: usize) {
    out.push(first);
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed string.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).expect("topics and client ids here are short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

/// Decodes a remaining length: `(value, bytes used)`, `None` if incomplete.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtoError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        if i == 4 {
            break;
        }
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(ProtoError::Violation("remaining length longer than 4 bytes".into()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_lengths_match_the_spec_examples() {
        // MQTT 3.1.1 §2.2.3: boundaries of 1 to 4 byte encodings.
        for (value, bytes) in [
            (0usize, &[0x00u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            packet_header(&mut out, 0x30, value);
            assert_eq!(&out[1..], bytes, "{value}");
            assert_eq!(remaining_length_len(value), bytes.len(), "{value}");
            assert_eq!(remaining_length(bytes).unwrap(), Some((value, bytes.len())));
        }
        assert_eq!(remaining_length(&[0x80, 0x80]).unwrap(), None);
        assert!(remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn mesh_retargets_the_topic_in_place() {
        let mut conn = Mqtt::new("127.0.0.1:1".parse().unwrap(), 0xab).offline_conn(3);
        Mqtt::retarget(&mut conn, 42);
        assert_eq!(conn.topic, b"lt/000000ab/000042");
    }

    #[test]
    fn publishes_round_trip_and_partial_packets_wait() {
        let conn = MqttConn { topic: b"lt/x/1".to_vec() };
        let mut buf = Vec::new();
        Mqtt::encode_message(&conn, &mut buf, b"hello");
        assert_eq!(buf, b"\x30\x0d\x00\x06lt/x/1hello");
        buf.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        // QoS 1 PUBLISH with packet id 7, then half a packet.
        buf.extend_from_slice(b"\x32\x0b\x00\x04lt/y\x00\x07abc");
        buf.extend_from_slice(b"\x30\x0d\x00\x06lt/");
        let mut got = Vec::new();
        let mut conn = conn;
        let n = Mqtt::decode(&mut conn, &buf, &mut Vec::new(), &mut |i| {
            if let Inbound::Message(m) = i {
                got.push(m.to_vec());
            }
        })
        .unwrap();
        assert_eq!(got, [b"hello".to_vec(), b"abc".to_vec()]);
        assert_eq!(n, buf.len() - 7);
    }
}
