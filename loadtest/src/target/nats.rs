//! nats-server over TCP, core protocol: each receiver subscribes to its own
//! subject `lt.<nonce>.<pair>` (fan-out: every receiver to `lt.<nonce>.all`),
//! each sender publishes there. Core NATS has
//! no answers, so the closed loop counts receipts.
//!
//! A minimal hand-written client (`CONNECT`, `SUB`, `PUB`, `PING`/`PONG`,
//! `MSG`): the text protocol is small and documented, and `async-nats` would
//! bring a tokio runtime and a task per connection into a generator whose
//! threads drive their sockets themselves.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;

use super::ws::Tunneled;
use super::{Connected, HandshakeIo, Inbound, ProtoError, Protocol, Role, Topology, find, tcp_connect};

/// The nats-server target.
#[derive(Debug)]
pub struct Nats {
    addr: SocketAddr,
    nonce: u32,
    topology: Topology,
}

/// One NATS connection's state: the `PUB <subject> ` prefix it sends.
#[derive(Debug)]
pub struct NatsConn {
    pub_prefix: Vec<u8>,
}

impl Nats {
    /// A server at `addr`; `nonce` keeps this run's subjects apart.
    pub fn new(addr: SocketAddr, nonce: u32) -> Self {
        Self { addr, nonce, topology: Topology::Pairs }
    }

    /// The same server with every message on one subject (fan-out).
    pub fn with_topology(self, topology: Topology) -> Self {
        Self { topology, ..self }
    }

    fn subject(&self, pair: usize) -> String {
        match self.topology {
            Topology::Pairs => format!("lt.{:08x}.{pair:06}", self.nonce),
            Topology::Fanout => format!("lt.{:08x}.all", self.nonce),
        }
    }
}

impl Protocol for Nats {
    type Conn = NatsConn;
    const ANSWERS: bool = false;
    const GOODBYE: &'static [u8] = b"";

    fn offline_conn(&self, pair: usize) -> NatsConn {
        NatsConn { pub_prefix: format!("PUB {} ", self.subject(pair)).into_bytes() }
    }

    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<NatsConn>> {
        let mut stream = tcp_connect(self.addr, timeout)?;
        let (conn, leftover) = self.handshake(&mut stream, pair, role, timeout)?;
        Ok(Connected { stream, conn, leftover })
    }

    fn retarget(conn: &mut NatsConn, user: usize) {
        // "PUB lt.<nonce>.<six digits> "
        let n = conn.pub_prefix.len();
        crate::message::put_digits6(&mut conn.pub_prefix[n - 7..n - 1], user);
    }

    fn encode_message(conn: &NatsConn, out: &mut Vec<u8>, msg: &[u8]) {
        out.extend_from_slice(&conn.pub_prefix);
        put_decimal(out, msg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(msg);
        out.extend_from_slice(b"\r\n");
    }

    fn decode(
        _conn: &mut NatsConn,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while let Some(eol) = find(&buf[pos..], b"\r\n") {
            let line = &buf[pos..pos + eol];
            let after = pos + eol + 2;
            if let Some(args) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let len = args
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(parse_decimal)
                    .ok_or_else(|| ProtoError::Violation("MSG without a length".into()))?;
                let Some(payload) = buf.get(after..after + len) else { break };
                if buf.get(after + len..after + len + 2).is_none() {
                    break;
                }
                on(Inbound::Message(payload));
                pos = after + len + 2;
                continue;
            }
            if line == b"PING" {
                out.extend_from_slice(b"PONG\r\n");
            } else if line.starts_with(b"-ERR") {
                return Err(ProtoError::Closed(String::from_utf8_lossy(line).into_owned()));
            } else if !(line == b"PONG" || line == b"+OK" || line.starts_with(b"INFO ")) {
                return Err(ProtoError::Violation(format!(
                    "unexpected NATS line {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(64)])
                )));
            }
            pos = after;
        }
        Ok(pos)
    }
}

/// NATS over WebSocket: nats-server's `websocket` listener (no
/// subprotocol; protocol lines in binary frames, split anywhere). Like
/// nats.js and nats.go, which flush their buffered `PUB`s as one frame, a
/// send turn is one frame.
impl Tunneled for Nats {
    const SUBPROTOCOL: Option<&'static str> = None;
    const FRAME_PER_TURN: bool = true;

    fn handshake(
        &self,
        io: &mut impl HandshakeIo,
        pair: usize,
        role: Role,
        timeout: Duration,
    ) -> anyhow::Result<(NatsConn, Vec<u8>)> {
        let subject = self.subject(pair);
        let mut buf = Vec::new();
        let info_end = io.read_until(&mut buf, timeout, |b| Ok(find(b, b"\r\n").map(|i| i + 2)))?;
        if !buf.starts_with(b"INFO ") {
            bail!("not a NATS server: {}", String::from_utf8_lossy(&buf[..info_end]).trim_end());
        }
        buf.drain(..info_end);
        let mut hello = String::from(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1,\"name\":\"loadtest\"}\r\n",
        );
        if role == Role::Receiver {
            hello.push_str(&format!("SUB {subject} 1\r\n"));
        }
        // The PONG proves the server processed CONNECT and SUB.
        hello.push_str("PING\r\n");
        io.send(hello.as_bytes())?;
        let end = io.read_until(&mut buf, timeout, |b| {
            if let Some(i) = find(b, b"-ERR") {
                let line = b[i..].split(|&c| c == b'\r').next().unwrap_or_default();
                bail!("nats-server refused: {}", String::from_utf8_lossy(line));
            }
            Ok(find(b, b"PONG\r\n").map(|i| i + 6))
        })?;
        Ok((NatsConn { pub_prefix: format!("PUB {subject} ").into_bytes() }, buf.split_off(end)))
    }

    fn message_len(conn: &NatsConn, msg_len: usize) -> usize {
        conn.pub_prefix.len() + decimal_len(msg_len) + 2 + msg_len + 2
    }
}

/// How many decimal digits `n` has.
fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `n` in decimal without allocating.
fn put_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + usize::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_retargets_the_subject_in_place() {
        let mut conn = Nats::new("127.0.0.1:1".parse().unwrap(), 0xab).offline_conn(3);
        Nats::retarget(&mut conn, 42);
        assert_eq!(conn.pub_prefix, b"PUB lt.000000ab.000042 ");
    }

    #[test]
    fn pub_and_msg_round_trip_and_partial_messages_wait() {
        let conn = NatsConn { pub_prefix: b"PUB lt.x.1 ".to_vec() };
        let mut out = Vec::new();
        Nats::encode_message(&conn, &mut out, b"hello\r\nworld");
        assert_eq!(out, b"PUB lt.x.1 12\r\nhello\r\nworld\r\n");
        let mut buf = b"MSG lt.x.1 1 12\r\nhello\r\nworld\r\nPING\r\n+OK\r\nMSG a 1 r.x 3\r\nabc\r\n".to_vec();
        buf.extend_from_slice(b"MSG lt.x.1 1 5\r\nhel");
        let mut got = Vec::new();
        let mut conn = conn;
        let mut replies = Vec::new();
        let n = Nats::decode(&mut conn, &buf, &mut replies, &mut |i| {
            if let Inbound::Message(m) = i {
                got.push(m.to_vec());
            }
        })
        .unwrap();
        assert_eq!(got, [b"hello\r\nworld".to_vec(), b"abc".to_vec()]);
        assert_eq!(replies, b"PONG\r\n");
        assert_eq!(&buf[n..], b"MSG lt.x.1 1 5\r\nhel");
    }

    #[test]
    fn errors_close_and_decimals_are_exact() {
        let mut conn = NatsConn { pub_prefix: Vec::new() };
        let err = Nats::decode(&mut conn, b"-ERR 'Slow Consumer'\r\n", &mut Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ProtoError::Closed(m) if m.contains("Slow Consumer")));
        for n in [0, 7, 10, 256, 65_536, usize::MAX] {
            let mut out = Vec::new();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(decimal_len(n), out.len());
        }
        assert_eq!(parse_decimal(b"123"), Some(123));
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b""), None);
    }
}
