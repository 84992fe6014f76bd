//! The client side of WebSocket (RFC 6455) the targets share: the upgrade,
//! client frame headers, server frame parsing, and [`WsTunnel`], which
//! carries another protocol's byte stream (MQTT, NATS) in binary frames —
//! Mosquitto's `protocol websockets` listener and nats-server's `websocket`
//! block.
//!
//! Framing follows the protocol's own WebSocket clients
//! ([`Tunneled::FRAME_PER_TURN`]): NATS writes a send turn's `PUB`s as one
//! frame, MQTT one frame per packet.
//!
//! Enough for a well-behaved server on loopback: client frames are masked
//! with the all-zero key (legal, and it makes masking free for the
//! generator; every server still runs its unmasking pass, so all targets pay
//! the same), and the upgrade answer's `Sec-WebSocket-Accept` is not
//! checked, its 101 status is.

use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::{Connected, HandshakeIo, Inbound, ProtoError, Protocol, Role, find, read_until, tcp_connect, write_all};

/// Longest client frame header: 2 + 8 (length) + 4 (mask).
pub(crate) const MAX_CLIENT_HEADER: usize = 14;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xa;

/// A masked (zero key) close frame without a status.
pub(crate) const CLOSE: &[u8] = &[0x80 | OP_CLOSE, 0x80, 0, 0, 0, 0];

/// Most stream bytes a tunnel holds for an incomplete inner unit.
const MAX_PENDING: usize = 16 << 20;

/// Sends the upgrade request for `path` on `stream` (with the extra header
/// lines `headers`, each ending in CRLF) and waits for `101`. Returns the
/// bytes that followed the answer's head.
pub(crate) fn upgrade(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    write_all(stream, request.as_bytes())?;
    let mut buf = Vec::new();
    let end = read_until(stream, &mut buf, timeout, |b| Ok(find(b, b"\r\n\r\n").map(|i| i + 4)))?;
    let status = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    if !status.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buf[..end]);
        bail!("the server refused the upgrade: {}", head.lines().next().unwrap_or_default());
    }
    Ok(buf.split_off(end))
}

/// Appends the header of a final, masked (all-zero key) client frame.
pub(crate) fn client_header(out: &mut Vec<u8>, len: usize, opcode: u8) {
    let (h, n) = header_bytes(len, opcode);
    out.extend_from_slice(&h[..n]);
}

/// Makes `out[start..]` the payload of one final, masked (all-zero key)
/// client frame: inserts the header before it, moving the payload up by
/// the header's length. The payload's length is only known once it is
/// encoded, and the header's own length depends on it.
pub(crate) fn frame_from(out: &mut Vec<u8>, start: usize, opcode: u8) {
    let (h, n) = header_bytes(out.len() - start, opcode);
    out.splice(start..start, h[..n].iter().copied());
}

/// The header of a final, masked (all-zero key) client frame with a
/// `len`-byte payload, and how many of the bytes it uses.
fn header_bytes(len: usize, opcode: u8) -> ([u8; MAX_CLIENT_HEADER], usize) {
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
    (h, n + 4)
}

/// One server frame's header, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerFrame {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// Where the payload is, relative to the frame's start.
    pub payload: Range<usize>,
}

/// Parses one unmasked server frame from the front of `buf`; `None` if
/// incomplete. Reserved bits and masks are violations.
pub(crate) fn server_frame(buf: &[u8]) -> Result<Option<ServerFrame>, ProtoError> {
    let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(ProtoError::Violation("reserved bits set by the server (compression was not offered)".into()));
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
    Ok(Some(ServerFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload: start..end }))
}

/// The error for a close frame's payload.
pub(crate) fn closed(payload: &[u8]) -> ProtoError {
    let code = payload.first_chunk::<2>().map_or(1005, |c| u16::from_be_bytes(*c));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
    ProtoError::Closed(format!("WebSocket close {code} {reason}"))
}

/// A protocol that can also run inside WebSocket binary frames.
pub trait Tunneled: Protocol {
    /// The `Sec-WebSocket-Protocol` to ask for, if the server needs one.
    const SUBPROTOCOL: Option<&'static str>;

    /// The protocol's handshake (authentication, subscription) over `io`
    /// for connection `role` of pair `pair`: the state and the stream bytes
    /// that followed the handshake's answer.
    fn handshake(
        &self,
        io: &mut impl HandshakeIo,
        pair: usize,
        role: Role,
        timeout: Duration,
    ) -> anyhow::Result<(Self::Conn, Vec<u8>)>;

    /// True when the protocol's own WebSocket clients write what they have
    /// buffered as one binary frame (nats.js, nats.go: a flush of several
    /// `PUB`s is one frame), so the tunnel frames each send turn once, at
    /// [`Protocol::end_turn`]. False when they frame each packet (Paho's
    /// JavaScript MQTT client sends one packet per frame), so the tunnel
    /// frames each message.
    const FRAME_PER_TURN: bool;

    /// The length [`Protocol::encode_message`] appends for a `msg_len`-byte
    /// message (so the frame header goes first, with no copy).
    fn message_len(conn: &Self::Conn, msg_len: usize) -> usize;
}

/// Protocol `P` carried over WebSocket to `ws://host/path`.
#[derive(Debug)]
pub struct WsTunnel<P> {
    inner: P,
    addr: SocketAddr,
    host: String,
    path: String,
}

impl<P> WsTunnel<P> {
    /// `inner` over a WebSocket to `addr` (`host` and `path` go into the
    /// upgrade request).
    pub fn new(inner: P, addr: SocketAddr, host: String, path: String) -> Self {
        Self { inner, addr, host, path }
    }
}

/// A tunnelled connection: the inner state, the inner stream bytes not yet
/// decoded (an inner unit split across frames), and a scratch buffer for the
/// inner protocol's replies before they are framed.
#[derive(Debug)]
pub struct TunnelConn<C> {
    inner: C,
    pending: Vec<u8>,
    replies: Vec<u8>,
}

impl<C> TunnelConn<C> {
    fn new(inner: C, pending: Vec<u8>) -> Self {
        Self { inner, pending, replies: Vec::new() }
    }
}

impl<P: Tunneled> Protocol for WsTunnel<P> {
    type Conn = TunnelConn<P::Conn>;
    const ANSWERS: bool = P::ANSWERS;
    /// A WebSocket close, as a browser tab closing would send.
    const GOODBYE: &'static [u8] = CLOSE;

    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<Self::Conn>> {
        let mut stream = tcp_connect(self.addr, timeout)?;
        let headers = P::SUBPROTOCOL.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
        let raw = upgrade(&mut stream, &self.host, &self.path, &headers, timeout)?;
        let mut io = FramedIo { stream: &mut stream, raw };
        let (conn, pending) = self.inner.handshake(&mut io, pair, role, timeout)?;
        let leftover = io.raw;
        Ok(Connected { stream, conn: TunnelConn::new(conn, pending), leftover })
    }

    fn offline_conn(&self, pair: usize) -> Self::Conn {
        TunnelConn::new(self.inner.offline_conn(pair), Vec::new())
    }

    fn retarget(conn: &mut Self::Conn, user: usize) {
        P::retarget(&mut conn.inner, user);
    }

    fn encode_message(conn: &Self::Conn, out: &mut Vec<u8>, msg: &[u8]) {
        if !P::FRAME_PER_TURN {
            client_header(out, P::message_len(&conn.inner, msg.len()), OP_BINARY);
        }
        P::encode_message(&conn.inner, out, msg);
    }

    fn end_turn(conn: &Self::Conn, out: &mut Vec<u8>, start: usize) {
        P::end_turn(&conn.inner, out, start);
        if P::FRAME_PER_TURN && out.len() > start {
            frame_from(out, start, OP_BINARY);
        }
    }

    fn decode(
        conn: &mut Self::Conn,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while let Some(f) = server_frame(&buf[pos..])? {
            let payload = &buf[pos + f.payload.start..pos + f.payload.end];
            pos += f.payload.end;
            match f.opcode {
                // A frame boundary means nothing to the inner stream.
                OP_BINARY | OP_TEXT | OP_CONTINUATION => conn.feed::<P>(payload, out, on)?,
                OP_PING => {
                    client_header(out, payload.len(), OP_PONG);
                    out.extend_from_slice(payload);
                }
                OP_PONG => {}
                OP_CLOSE => return Err(closed(payload)),
                other => return Err(ProtoError::Violation(format!("unexpected WebSocket opcode {other:#x}"))),
            }
        }
        Ok(pos)
    }
}

impl<C> TunnelConn<C> {
    /// Decodes `data` (the next inner stream bytes) with `P`, straight from
    /// the frame when nothing is pending, and frames the replies.
    fn feed<P: Protocol<Conn = C>>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<(), ProtoError> {
        if self.pending.is_empty() {
            let used = P::decode(&mut self.inner, data, &mut self.replies, on)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = P::decode(&mut self.inner, &self.pending, &mut self.replies, on)?;
            self.pending.drain(..used);
        }
        if self.pending.len() > MAX_PENDING {
            return Err(ProtoError::Violation(format!("an inner unit longer than {MAX_PENDING} bytes")));
        }
        if !self.replies.is_empty() {
            client_header(out, self.replies.len(), OP_BINARY);
            out.append(&mut self.replies);
        }
        Ok(())
    }
}

/// A handshake's byte stream over WebSocket frames (blocking).
struct FramedIo<'a> {
    stream: &'a mut TcpStream,
    /// Received bytes not yet parsed into frames.
    raw: Vec<u8>,
}

impl HandshakeIo for FramedIo<'_> {
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(MAX_CLIENT_HEADER + bytes.len());
        client_header(&mut frame, bytes.len(), OP_BINARY);
        frame.extend_from_slice(bytes);
        write_all(self.stream, &frame)
    }

    fn read_until(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        mut done: impl FnMut(&[u8]) -> anyhow::Result<Option<usize>>,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            // Move the payloads of complete frames into the inner stream.
            let mut pos = 0;
            while let Some(f) = server_frame(&self.raw[pos..])? {
                let payload = pos + f.payload.start..pos + f.payload.end;
                pos += f.payload.end;
                match f.opcode {
                    OP_BINARY | OP_TEXT | OP_CONTINUATION => buf.extend_from_slice(&self.raw[payload]),
                    OP_CLOSE => return Err(closed(&self.raw[payload]).into()),
                    _ => {}
                }
            }
            self.raw.drain(..pos);
            if let Some(n) = done(buf)? {
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "handshake timed out");
            let before = self.raw.len();
            // One read: at least one more byte, or the error.
            read_until(self.stream, &mut self.raw, left, |b| Ok((b.len() > before).then_some(0)))
                .context("reading WebSocket frames")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn server_frames_parse_and_partial_ones_wait() {
        let f = server_frame(&[0x02, 3, b'a', b'b', b'c', 0x80]).unwrap().unwrap();
        assert_eq!(f, ServerFrame { fin: false, opcode: OP_BINARY, payload: 2..5 });
        assert_eq!(server_frame(&[0x82, 0x7e, 0x01]).unwrap(), None);
        assert_eq!(server_frame(&[0x82, 5, b'a']).unwrap(), None);
        assert!(server_frame(&[0xc2, 0]).is_err(), "RSV1 without negotiated compression");
        assert!(server_frame(&[0x82, 0x81, 0, 0, 0, 0, 1]).is_err(), "masked");
    }

    /// A server frame with `payload`.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_tunnel_reassembles_units_split_across_frames_and_frames_replies() {
        use crate::target::nats::Nats;
        let nats = WsTunnel::new(
            Nats::new("127.0.0.1:1".parse().unwrap(), 1),
            "127.0.0.1:1".parse().unwrap(),
            "h".into(),
            "/".into(),
        );
        let mut conn = nats.offline_conn(0);
        let mut buf = frame(false, OP_BINARY, b"MSG a 1 5\r\nhe");
        buf.extend(frame(true, OP_CONTINUATION, b"llo\r\nPING\r\nMSG a 1 3\r\nab"));
        buf.extend(frame(true, OP_PING, b"p"));
        buf.extend_from_slice(&[0x82, 10, b'c']); // an incomplete frame waits
        let (mut out, mut got) = (Vec::new(), Vec::new());
        let n = WsTunnel::<Nats>::decode(&mut conn, &buf, &mut out, &mut |i| {
            if let Inbound::Message(m) = i {
                got.push(m.to_vec());
            }
        })
        .unwrap();
        assert_eq!(n, buf.len() - 3);
        assert_eq!(got, [b"hello".to_vec()]);
        assert_eq!(conn.pending, b"MSG a 1 3\r\nab");
        let mut want = vec![0x82, 0x86, 0, 0, 0, 0];
        want.extend_from_slice(b"PONG\r\n");
        want.extend_from_slice(&[0x8a, 0x81, 0, 0, 0, 0, b'p']);
        assert_eq!(out, want);
        let rest = frame(true, OP_BINARY, b"c\r\n");
        WsTunnel::<Nats>::decode(&mut conn, &rest, &mut out, &mut |i| {
            if let Inbound::Message(m) = i {
                got.push(m.to_vec());
            }
        })
        .unwrap();
        assert_eq!(got[1], b"abc");
        assert!(conn.pending.is_empty());
        let err = WsTunnel::<Nats>::decode(&mut conn, &frame(true, OP_CLOSE, &[3, 232]), &mut out, &mut |_| {});
        assert_eq!(err.unwrap_err(), ProtoError::Closed("WebSocket close 1000 ".into()));
    }

    /// Parses a client frame at the front of `client` (the mask key is
    /// zero, so the payload needs no unmasking); the payload range skips
    /// the key.
    fn as_server_frame(client: &[u8]) -> ServerFrame {
        let unmasked = [&[client[0], client[1] & 0x7f], &client[2..]].concat();
        let f = server_frame(&unmasked).unwrap().unwrap();
        ServerFrame { payload: f.payload.start + 4..f.payload.end + 4, ..f }
    }

    #[test]
    fn a_nats_send_turn_is_one_frame_of_all_its_pubs() {
        use crate::target::nats::Nats;
        let nats = WsTunnel::new(
            Nats::new("127.0.0.1:1".parse().unwrap(), 0xab),
            "127.0.0.1:1".parse().unwrap(),
            "h".into(),
            "/".into(),
        );
        let conn = nats.offline_conn(2);
        // Header lengths 6, 8 and 14: under 126, under 64 KiB, above.
        for (n, len) in [(3, 5), (4, 100), (5, 20_000)] {
            // Bytes from an earlier turn, not yet written, stay as they are.
            let mut out = b"earlier".to_vec();
            let start = out.len();
            let mut pubs = Vec::new();
            for _ in 0..n {
                WsTunnel::<Nats>::encode_message(&conn, &mut out, &vec![7; len]);
                Nats::encode_message(&conn.inner, &mut pubs, &vec![7; len]);
            }
            WsTunnel::<Nats>::end_turn(&conn, &mut out, start);
            assert_eq!(&out[..start], b"earlier");
            let f = as_server_frame(&out[start..]);
            assert!(f.fin && f.opcode == OP_BINARY, "{f:?}");
            assert_eq!(&out[start..][f.payload.clone()], pubs, "{n} PUBs of {len} bytes");
            assert_eq!(start + f.payload.end, out.len(), "one frame, nothing after it");
        }
        // An empty turn writes nothing.
        let mut out = b"earlier".to_vec();
        WsTunnel::<Nats>::end_turn(&conn, &mut out, 7);
        assert_eq!(out, b"earlier");
        // Plain NATS is untouched by the turn's end.
        let mut out = Vec::new();
        Nats::encode_message(&conn.inner, &mut out, b"x");
        Nats::end_turn(&conn.inner, &mut out, 0);
        assert_eq!(out, b"PUB lt.000000ab.000002 1\r\nx\r\n");
    }

    #[test]
    fn tunnelled_messages_are_one_frame_of_the_announced_length() {
        use crate::target::mqtt::Mqtt;
        let mqtt = WsTunnel::new(
            Mqtt::new("127.0.0.1:1".parse().unwrap(), 1),
            "127.0.0.1:1".parse().unwrap(),
            "h".into(),
            "/".into(),
        );
        let conn = mqtt.offline_conn(3);
        for len in [0, 100, 200, 20_000] {
            let mut out = Vec::new();
            WsTunnel::<Mqtt>::encode_message(&conn, &mut out, &vec![7; len]);
            let one = out.len();
            WsTunnel::<Mqtt>::encode_message(&conn, &mut out, &vec![7; len]);
            WsTunnel::<Mqtt>::end_turn(&conn, &mut out, 0);
            // Still one frame per packet after the turn's end.
            assert_eq!(as_server_frame(&out).payload.end, one, "{len}");
            assert_eq!(as_server_frame(&out[one..]).payload.end, one, "{len}");
            assert_eq!(out.len(), 2 * one);
        }
    }
}
