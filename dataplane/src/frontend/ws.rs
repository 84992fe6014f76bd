//! WebSocket (RFC 6455) server-side framing, sans-IO.
//!
//! [`WsDecoder::decode`] works on the connection's read buffer: it parses one
//! frame header (tungstenite's [`FrameHeader::parse`]), checks it, unmasks
//! the payload in place and returns the payload as a range of that buffer,
//! so the server splits its buffer and hands the envelope on without a copy.
//! Only fragmented messages, which our clients do not normally send, are
//! assembled into an owned buffer.
//!
//! The encoders write the unmasked server frames: [`binary_header`] only
//! writes the 2–10 header bytes, so a `deliver` goes out as a vectored write
//! of [ws header][4-byte frame header][envelope bytes] with the envelope
//! bytes untouched.
//!
//! No extension is ever negotiated (the handshake refuses them all), so any
//! RSV bit is a protocol error. This module does not decide what to do with
//! a text message or a close; the server does (close 1003, echo the close).

use std::io::Cursor;
use std::ops::Range;

use switchboard_protocol::ErrorCode;
use switchboard_protocol::frame::FRAME_HEADER_LEN;
use switchboard_protocol::limits::MAX_ENVELOPE_LEN;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Longest header of a server (unmasked) frame.
pub const MAX_HEADER_LEN: usize = 10;
/// Longest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD_LEN: usize = 125;
/// Longest close reason: a control payload minus the 2-byte code.
pub const MAX_CLOSE_REASON_LEN: usize = MAX_CONTROL_PAYLOAD_LEN - 2;
/// Default message limit: one frame around a default-sized envelope.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = MAX_ENVELOPE_LEN + FRAME_HEADER_LEN;
/// A close frame without a status code, the answer to one without a code.
pub const EMPTY_CLOSE_FRAME: [u8; 2] = [0x80 | OPCODE_CLOSE, 0];

const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// Decodes client frames from a connection's read buffer. One per
/// connection: it holds the state of a fragmented message.
#[derive(Debug, Clone)]
pub struct WsDecoder {
    max_message_len: usize,
    /// Boxed: rare, and every connection holds a decoder.
    partial: Option<Box<Partial>>,
}

/// A fragmented message in progress.
#[derive(Debug, Clone)]
enum Partial {
    Binary(Vec<u8>),
    /// Refused when it started ([`WsEvent::Text`]); only its length is kept,
    /// to bound it like any message.
    Text(usize),
}

impl WsDecoder {
    /// A decoder refusing messages longer than `max_message_len` bytes
    /// (after reassembly).
    pub fn new(max_message_len: usize) -> Self {
        Self { max_message_len, partial: None }
    }

    /// The message length limit.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// True while a fragmented message is incomplete.
    pub fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the frame at the start of `buf`.
    ///
    /// `Ok(None)`: the frame is incomplete; nothing was changed, read more
    /// and call again with the same bytes at the start. `Ok(Some((event,
    /// consumed)))`: the frame was `buf[..consumed]`, its payload has been
    /// unmasked in place, and ranges in `event` index `buf`. The caller must
    /// drop those `consumed` bytes before the next call (calling again on
    /// them would unmask them twice).
    ///
    /// A header announcing a payload over the limits fails as soon as the
    /// header is complete, before any payload is buffered. After an error,
    /// the server closes the connection with [`WsError::close_code`].
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Option<(WsEvent, usize)>, WsError> {
        let mut cursor = Cursor::new(&*buf);
        let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            // Reading from a slice cannot fail, so the only error is a
            // reserved opcode.
            Err(_) => return Err(WsError::ReservedOpcode(buf.first().map_or(0, |b| b & 0x0F))),
        };
        // At most 14 bytes, within `buf`.
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::ReservedBits);
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Unmasked);
        };
        // RFC 6455 §5.2: the most significant bit of a 64-bit length is 0,
        // and a length is in its shortest form (a 16-bit length is 126 or
        // more, a 64-bit one more than 65,535).
        let form = buf.get(1).map_or(0, |b| b & 0x7F);
        if payload_len >> 63 != 0 || (form == 126 && payload_len < 126) || (form == 127 && payload_len <= 0xFFFF) {
            return Err(WsError::BadLength);
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(WsError::FragmentedControl);
                }
                if payload_len > MAX_CONTROL_PAYLOAD_LEN as u64 {
                    return Err(WsError::ControlTooLong(payload_len));
                }
            }
            OpCode::Data(Data::Continue) => {
                let so_far = match self.partial.as_deref() {
                    Some(Partial::Binary(v)) => v.len(),
                    Some(Partial::Text(len)) => *len,
                    None => return Err(WsError::UnexpectedContinuation),
                };
                self.check_len((so_far as u64).saturating_add(payload_len))?;
            }
            OpCode::Data(_) => {
                if self.partial.is_some() {
                    return Err(WsError::ExpectedContinuation);
                }
                self.check_len(payload_len)?;
            }
        }
        // Within the limits checked above, so the length fits in a usize.
        let total = header_len.saturating_add(payload_len as usize);
        if buf.len() < total {
            return Ok(None);
        }
        let payload = header_len..total;
        unmask(&mut buf[payload.clone()], mask);

        let event = match header.opcode {
            OpCode::Data(Data::Binary) if header.is_final => WsEvent::Binary(payload),
            OpCode::Data(Data::Binary) => {
                self.partial = Some(Box::new(Partial::Binary(buf[payload].to_vec())));
                WsEvent::Fragment
            }
            OpCode::Data(Data::Text) => {
                if !header.is_final {
                    self.partial = Some(Box::new(Partial::Text(payload.len())));
                }
                WsEvent::Text
            }
            OpCode::Data(Data::Continue) => match self.partial.as_deref_mut() {
                Some(Partial::Binary(message)) => {
                    message.extend_from_slice(&buf[payload]);
                    if header.is_final {
                        let message = std::mem::take(message);
                        self.partial = None;
                        WsEvent::BinaryAssembled(message)
                    } else {
                        WsEvent::Fragment
                    }
                }
                Some(Partial::Text(len)) => {
                    *len += payload.len();
                    if header.is_final {
                        self.partial = None;
                    }
                    WsEvent::Fragment
                }
                // Checked above.
                None => return Err(WsError::UnexpectedContinuation),
            },
            OpCode::Control(Control::Ping) => WsEvent::Ping(payload),
            OpCode::Control(Control::Pong) => WsEvent::Pong(payload),
            OpCode::Control(Control::Close) => close_event(buf, payload)?,
            // Refused by `FrameHeader::parse`.
            OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
                return Err(WsError::ReservedOpcode(op));
            }
        };
        Ok(Some((event, total)))
    }

    fn check_len(&self, len: u64) -> Result<(), WsError> {
        if len > self.max_message_len as u64 {
            return Err(WsError::MessageTooLarge { len, max: self.max_message_len });
        }
        Ok(())
    }
}

impl Default for WsDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

/// What one decoded client frame means. Ranges index the buffer given to
/// [`WsDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsEvent {
    /// A complete binary message in one frame (the usual case): its payload,
    /// unmasked in place.
    Binary(Range<usize>),
    /// A complete binary message that came in fragments, reassembled.
    BinaryAssembled(Vec<u8>),
    /// The first frame of a text message. The protocol is binary only: the
    /// server closes with 1003 (`unsupported-data`). Any continuation frames
    /// of it are consumed as [`WsEvent::Fragment`].
    Text,
    /// A non-final fragment was consumed and buffered; nothing to do.
    Fragment,
    /// A ping; answer with [`pong_frame`] of this payload.
    Ping(Range<usize>),
    /// A pong.
    Pong(Range<usize>),
    /// A close frame. `code` is `None` for an empty payload; otherwise it is
    /// a code a peer may send and `reason` is valid UTF-8.
    Close {
        /// The status code, if any.
        code: Option<u16>,
        /// The reason text (empty range if none).
        reason: Range<usize>,
    },
}

/// Why the client's frames were refused. The server closes the connection
/// with [`close_code`](Self::close_code) and the `Display` text as reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A client frame without the mask bit (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1–3 set, but no extension was negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame payload over 125 bytes.
    #[error("control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is incomplete.
    #[error("new message before the fragmented one ended")]
    ExpectedContinuation,
    /// A 64-bit payload length with the most significant bit set, or a
    /// length not in its shortest form.
    #[error("invalid payload length (too large, or not in its shortest form)")]
    BadLength,
    /// The message is longer than the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Announced length (of the whole message so far, when fragmented).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A close payload of one byte.
    #[error("close frame with a truncated code")]
    CloseTruncated,
    /// A close code a peer must not send (RFC 6455 §7.4).
    #[error("invalid close code {0}")]
    BadCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("close reason is not UTF-8")]
    CloseReasonNotUtf8,
}

impl WsError {
    /// The WebSocket close code to send: 1009 for a message over the limit,
    /// 1007 for a close reason that is not UTF-8, else 1002.
    pub const fn close_code(&self) -> u16 {
        match self {
            Self::MessageTooLarge { .. } => 1009,
            Self::CloseReasonNotUtf8 => 1007,
            _ => 1002,
        }
    }

    /// The protocol error code, for logs and metrics.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::MessageTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Writes the header of an unmasked, final binary frame of `len` payload
/// bytes into `out` and returns its length (2, 4 or 10).
pub fn binary_header(len: usize, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    write_header(OPCODE_BINARY, len, out)
}

/// The length of the server frame header [`binary_header`] writes for a
/// payload of `payload_len` bytes: 2, 4 or 10.
pub const fn header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// A complete binary frame. For small server frames (accepted, error,
/// done…); deliveries use [`binary_header`] and a vectored write instead.
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    frame(OPCODE_BINARY, payload)
}

/// A close frame with `code` and `reason`, the reason truncated at a char
/// boundary to [`MAX_CLOSE_REASON_LEN`] bytes. `code` must be one an
/// endpoint may send (not 1005, 1006 or 1015); [`EMPTY_CLOSE_FRAME`] is the
/// close without a code.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    debug_assert!(is_valid_close_code(code), "close code {code} must not be sent");
    let reason = switchboard_protocol::frame::truncate_utf8(reason, MAX_CLOSE_REASON_LEN);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD_LEN];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    frame(OPCODE_CLOSE, &payload[..2 + reason.len()])
}

/// A pong frame echoing `payload` (truncated to 125 bytes; a decoded ping
/// payload always fits).
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    frame(OPCODE_PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD_LEN)])
}

/// A ping frame with `payload` (truncated to 125 bytes).
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    frame(OPCODE_PING, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD_LEN)])
}

/// Unmasks (or masks) `payload` in place (RFC 6455 §5.3), 8 bytes at a
/// time. The mask repeats every 4 bytes, so the 8-byte word is the mask
/// twice, and every chunk starts at a multiple of 4.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // `chunks_exact_mut(8)` yields 8-byte chunks only.
        let bytes: [u8; 8] = (*chunk).try_into().expect("8-byte chunk");
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn close_event(buf: &[u8], payload: Range<usize>) -> Result<WsEvent, WsError> {
    match payload.len() {
        0 => Ok(WsEvent::Close { code: None, reason: payload.end..payload.end }),
        1 => Err(WsError::CloseTruncated),
        _ => {
            let code = u16::from_be_bytes([buf[payload.start], buf[payload.start + 1]]);
            if !is_valid_close_code(code) {
                return Err(WsError::BadCloseCode(code));
            }
            let reason = payload.start + 2..payload.end;
            std::str::from_utf8(&buf[reason.clone()]).map_err(|_| WsError::CloseReasonNotUtf8)?;
            Ok(WsEvent::Close { code: Some(code), reason })
        }
    }
}

/// Close codes an endpoint may put on the wire (RFC 6455 §7.4, IANA
/// registry): 1000–1003, 1007–1014, 3000–4999. 1004 is reserved; 1005, 1006
/// and 1015 are never sent.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn write_header(opcode: u8, len: usize, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = write_header(opcode, payload.len(), &mut header);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::{Message, Role, WebSocket};

    use super::*;

    /// RFC 6455 §5.7: a single-frame masked text message "Hello".
    const MASKED_HELLO: [u8; 11] = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];

    /// Masks a client frame the way a client would (tests only).
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[start..], mask);
        out
    }

    /// Decodes every frame in `bytes`, checking that each is decoded only
    /// once complete; returns the events with range payloads resolved.
    fn decode_all(decoder: &mut WsDecoder, mut bytes: Vec<u8>) -> Result<Vec<(WsEvent, Vec<u8>)>, WsError> {
        let mut events = Vec::new();
        while !bytes.is_empty() {
            let (event, consumed) = decoder.decode(&mut bytes)?.expect("a complete frame");
            let payload = match &event {
                WsEvent::Binary(r) | WsEvent::Ping(r) | WsEvent::Pong(r) => bytes[r.clone()].to_vec(),
                WsEvent::Close { reason, .. } => bytes[reason.clone()].to_vec(),
                WsEvent::BinaryAssembled(v) => v.clone(),
                _ => Vec::new(),
            };
            assert!(consumed > 0 && consumed <= bytes.len());
            bytes.drain(..consumed);
            events.push((event, payload));
        }
        Ok(events)
    }

    #[test]
    fn rfc_6455_examples() {
        let mut d = WsDecoder::default();

        // A single-frame masked text message.
        let mut buf = MASKED_HELLO.to_vec();
        assert_eq!(d.decode(&mut buf), Ok(Some((WsEvent::Text, 11))));
        assert_eq!(&buf[6..], b"Hello");

        // An unmasked text message, as a server would send it: refused.
        let mut buf = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(d.decode(&mut buf), Err(WsError::Unmasked));

        // Masked ping "Hello" (the RFC shows it unmasked; masked with the
        // same key as above).
        let mut buf = MASKED_HELLO;
        buf[0] = 0x89;
        assert_eq!(d.decode(&mut buf), Ok(Some((WsEvent::Ping(6..11), 11))));
        assert_eq!(&buf[6..], b"Hello");

        // A fragmented text message: "Hel" then "lo", masked.
        let mut bytes = client_frame(0x01, b"Hel", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x80, b"lo", [5, 6, 7, 8]));
        let events = decode_all(&mut d, bytes).unwrap();
        assert_eq!(events.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), [WsEvent::Text, WsEvent::Fragment]);
        assert!(!d.is_assembling());

        // 256 bytes and 64 KiB binary messages, masked: 16- and 64-bit
        // lengths.
        for len in [256, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut buf = client_frame(0x82, &payload, [0xde, 0xad, 0xbe, 0xef]);
            let header_len = if len == 256 { 8 } else { 14 };
            assert_eq!(buf[1], if len == 256 { 0xFE } else { 0xFF });
            assert_eq!(d.decode(&mut buf), Ok(Some((WsEvent::Binary(header_len..header_len + len), header_len + len))));
            assert_eq!(buf[header_len..], payload[..]);
        }
    }

    #[test]
    fn every_prefix_is_incomplete_and_left_untouched() {
        let frames = [
            MASKED_HELLO.to_vec(),
            client_frame(0x82, &[0xAB; 300], [9, 8, 7, 6]),
            client_frame(0x82, &[0xCD; 70_000], [1, 1, 1, 1]),
            client_frame(0x88, b"\x03\xe8bye", [4, 3, 2, 1]),
            client_frame(0x8A, b"", [0, 0, 0, 0]),
        ];
        for frame in frames {
            let mut d = WsDecoder::new(100_000);
            for end in 0..frame.len() {
                let mut prefix = frame[..end].to_vec();
                assert_eq!(d.decode(&mut prefix), Ok(None), "prefix of {end} of {} bytes", frame.len());
                assert_eq!(prefix, frame[..end], "an incomplete frame is not modified");
            }
            // Bytes after the frame are not consumed.
            let mut with_next = frame.clone();
            with_next.extend_from_slice(&MASKED_HELLO[..3]);
            let (_, consumed) = d.decode(&mut with_next).unwrap().unwrap();
            assert_eq!(consumed, frame.len());
            assert_eq!(with_next[consumed..], MASKED_HELLO[..3]);
        }
    }

    #[test]
    fn fragmented_binary_with_interleaved_controls() {
        let mut d = WsDecoder::new(10);
        let mut bytes = client_frame(0x02, b"ab", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x89, b"ping!", [5, 6, 7, 8]));
        bytes.extend(client_frame(0x00, b"cde", [9, 9, 9, 9]));
        bytes.extend(client_frame(0x8A, b"", [0, 1, 0, 1]));
        bytes.extend(client_frame(0x80, b"fghij", [7, 7, 7, 7]));
        bytes.extend(client_frame(0x82, b"single", [3, 3, 3, 3]));
        let events = decode_all(&mut d, bytes).unwrap();
        let kinds: Vec<_> = events.iter().map(|(e, p)| (std::mem::discriminant(e), p.as_slice())).collect();
        let expected: [(WsEvent, &[u8]); 6] = [
            (WsEvent::Fragment, b""),
            (WsEvent::Ping(0..0), b"ping!"),
            (WsEvent::Fragment, b""),
            (WsEvent::Pong(0..0), b""),
            (WsEvent::BinaryAssembled(Vec::new()), b"abcdefghij"),
            (WsEvent::Binary(0..0), b"single"),
        ];
        assert_eq!(kinds, expected.iter().map(|(e, p)| (std::mem::discriminant(e), *p)).collect::<Vec<_>>());
        assert!(!d.is_assembling());

        // One byte more than the limit, announced by the last fragment.
        let mut bytes = client_frame(0x02, b"abcde", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x80, b"fghijk", [1, 2, 3, 4]));
        let first = bytes.len() - 12;
        let (event, consumed) = d.decode(&mut bytes).unwrap().unwrap();
        assert_eq!((event, consumed), (WsEvent::Fragment, first));
        // Only the header of the oversized fragment is needed to refuse it.
        let mut header_only = bytes[first..first + 6].to_vec();
        assert_eq!(d.decode(&mut header_only), Err(WsError::MessageTooLarge { len: 11, max: 10 }));
    }

    #[test]
    fn fragmentation_errors() {
        let mut d = WsDecoder::default();
        let mut buf = client_frame(0x80, b"x", [1, 2, 3, 4]);
        assert_eq!(d.decode(&mut buf), Err(WsError::UnexpectedContinuation));

        let mut bytes = client_frame(0x02, b"ab", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x82, b"cd", [1, 2, 3, 4]));
        let n = bytes.len() / 2;
        assert_eq!(d.decode(&mut bytes).unwrap().unwrap(), (WsEvent::Fragment, n));
        assert_eq!(d.decode(&mut bytes[n..]), Err(WsError::ExpectedContinuation));

        let mut d = WsDecoder::default();
        let mut bytes = client_frame(0x01, b"ab", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x82, b"cd", [1, 2, 3, 4]));
        assert_eq!(d.decode(&mut bytes).unwrap().unwrap(), (WsEvent::Text, n));
        assert_eq!(d.decode(&mut bytes[n..]), Err(WsError::ExpectedContinuation));

        for first in [0x09, 0x08, 0x0A] {
            let mut buf = client_frame(first, b"", [1, 2, 3, 4]);
            assert_eq!(WsDecoder::default().decode(&mut buf), Err(WsError::FragmentedControl));
        }
    }

    #[test]
    fn oversized_lengths_fail_on_the_header() {
        let mut d = WsDecoder::new(DEFAULT_MAX_MESSAGE_LEN);
        // 127 with 2^63: the most significant bit must be 0.
        let mut buf = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Err(WsError::BadLength));
        // Lengths not in their shortest form (RFC 6455 §5.2): 12 bytes with a
        // 64-bit length, 125 with a 16-bit one, 65,535 with a 64-bit one.
        let mut buf = [0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 12, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Err(WsError::BadLength));
        let mut buf = [0x82, 0xFE, 0, 125, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Err(WsError::BadLength));
        let mut buf = [0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Err(WsError::BadLength));
        assert_eq!(WsError::BadLength.close_code(), 1002);
        // The shortest forms at their edges wait for the payload.
        let mut buf = [0x82, 0xFE, 0, 126, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Ok(None));
        let mut buf = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Ok(None));
        let mut buf = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4];
        assert_eq!(
            d.decode(&mut buf),
            Err(WsError::MessageTooLarge { len: i64::MAX as u64, max: DEFAULT_MAX_MESSAGE_LEN })
        );
        let limit = DEFAULT_MAX_MESSAGE_LEN as u64;
        let mut buf = [&[0x82, 0xFF][..], &(limit + 1).to_be_bytes(), &[1, 2, 3, 4]].concat();
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!((err.close_code(), err.code()), (1009, ErrorCode::FrameTooLarge));
        // Exactly the limit: waits for the payload.
        let mut buf = [&[0x82, 0xFF][..], &limit.to_be_bytes(), &[1, 2, 3, 4]].concat();
        assert_eq!(d.decode(&mut buf), Ok(None));
        // Text frames are bounded too.
        let mut buf = [&[0x81, 0xFF][..], &(limit + 1).to_be_bytes(), &[1, 2, 3, 4]].concat();
        assert_eq!(d.decode(&mut buf).unwrap_err().close_code(), 1009);
        // Control frames: at most 125 bytes.
        let mut buf = [0x89, 0xFE, 0x00, 0x7E, 1, 2, 3, 4];
        assert_eq!(d.decode(&mut buf), Err(WsError::ControlTooLong(126)));
        let mut buf = client_frame(0x89, &[0; 125], [1, 2, 3, 4]);
        assert_eq!(d.decode(&mut buf), Ok(Some((WsEvent::Ping(6..131), 131))));
    }

    #[test]
    fn header_errors() {
        let mut d = WsDecoder::default();
        for rsv in [0x40, 0x20, 0x10] {
            let mut buf = MASKED_HELLO;
            buf[0] = 0x82 | rsv;
            assert_eq!(d.decode(&mut buf), Err(WsError::ReservedBits));
        }
        for op in [0x3, 0x7, 0xB, 0xF] {
            let mut buf = MASKED_HELLO;
            buf[0] = 0x80 | op;
            assert_eq!(d.decode(&mut buf), Err(WsError::ReservedOpcode(op)));
        }
        let mut buf = [0x82, 0x00];
        assert_eq!(d.decode(&mut buf), Err(WsError::Unmasked));
        assert_eq!(WsError::Unmasked.close_code(), 1002);
        assert_eq!(WsError::Unmasked.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn close_frames() {
        let decode = |payload: &[u8]| {
            let mut buf = client_frame(0x88, payload, [0x11, 0x22, 0x33, 0x44]);
            let result = WsDecoder::default().decode(&mut buf);
            result.map(|ok| {
                let (event, _) = ok.expect("complete");
                match event {
                    WsEvent::Close { code, reason } => (code, buf[reason].to_vec()),
                    other => panic!("{other:?}"),
                }
            })
        };
        assert_eq!(decode(b""), Ok((None, Vec::new())));
        assert_eq!(decode(b"\x03\xe8"), Ok((Some(1000), Vec::new())));
        assert_eq!(decode(&[b"\x0f\xa0", "é bye".as_bytes()].concat()), Ok((Some(4000), "é bye".as_bytes().to_vec())));
        assert_eq!(decode(b"\x03"), Err(WsError::CloseTruncated));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(decode(&code.to_be_bytes()), Err(WsError::BadCloseCode(code)), "{code}");
        }
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1013, 1014, 3000, 4101, 4999] {
            assert_eq!(decode(&code.to_be_bytes()).map(|c| c.0), Ok(Some(code)));
        }
        let err = decode(b"\x03\xe8\xff\xfe").unwrap_err();
        assert_eq!((err, err.close_code()), (WsError::CloseReasonNotUtf8, 1007));
        assert_eq!(decode(b"\x03\xe8\xce").unwrap_err().close_code(), 1007);
        assert_eq!(WsError::BadCloseCode(5).close_code(), 1002);
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xA5).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn encoders() {
        let header = |len: usize| {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = binary_header(len, &mut out);
            out[..n].to_vec()
        };
        assert_eq!(header(0), [0x82, 0]);
        assert_eq!(header(125), [0x82, 125]);
        assert_eq!(header(126), [0x82, 126, 0, 126]);
        assert_eq!(header(65535), [0x82, 126, 0xFF, 0xFF]);
        assert_eq!(header(65536), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        // Same bytes as tungstenite's header formatting.
        for len in [0, 1, 125, 126, 127, 65535, 65536, 65540, 1 << 24] {
            let mut theirs = Vec::new();
            let binary = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
            binary.format(len as u64, &mut theirs).unwrap();
            assert_eq!(header(len), theirs, "{len}");
            assert_eq!(header_len(len), theirs.len(), "{len}");
        }

        assert_eq!(close_frame(1000, ""), [0x88, 2, 0x03, 0xe8]);
        assert_eq!(close_frame(1003, "text"), b"\x88\x06\x03\xebtext");
        assert_eq!(EMPTY_CLOSE_FRAME, [0x88, 0]);
        // 61 two-byte chars = 122 bytes; one more would be 124 > 123.
        let long = "é".repeat(100);
        let frame = close_frame(4402, &long);
        assert_eq!(frame[1] as usize, 2 + 122);
        assert_eq!(frame.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        let frame = close_frame(1002, &"a".repeat(200));
        assert_eq!((frame[1], frame.len()), (125, 127));

        assert_eq!(pong_frame(b"Hello"), b"\x8a\x05Hello");
        assert_eq!(ping_frame(b""), [0x89, 0]);
        assert_eq!(pong_frame(&[7; 200]).len(), 2 + 125);
        assert_eq!(binary_frame(b"\x01\x02"), [0x82, 2, 1, 2]);
        assert_eq!(binary_frame(&[0; 300])[..4], [0x82, 126, 1, 44]);
    }

    /// An in-memory stream for tungstenite's client: reads `input`, appends
    /// writes to `output`.
    #[derive(Default)]
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.input.read(buf)? {
                0 => Err(std::io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn decodes_what_the_tungstenite_client_sends() {
        let mut client = WebSocket::from_raw_socket(Pipe::default(), Role::Client, None);
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        client.send(Message::Binary(b"\x01\x01\x00\x00envelope".to_vec().into())).unwrap();
        client.send(Message::Ping(b"p".to_vec().into())).unwrap();
        client.send(Message::Binary(big.clone().into())).unwrap();
        client.send(Message::Text("hi".into())).unwrap();
        client
            .send(Message::Close(Some(tungstenite::protocol::CloseFrame { code: 4000.into(), reason: "done".into() })))
            .unwrap();
        let bytes = std::mem::take(&mut client.get_mut().output);
        let events = decode_all(&mut WsDecoder::new(100_000), bytes).unwrap();
        let payloads: Vec<&[u8]> = events.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&b"\x01\x01\x00\x00envelope"[..], b"p", &big, b"", b"done"]);
        assert!(matches!(events[0].0, WsEvent::Binary(_)));
        assert!(matches!(events[1].0, WsEvent::Ping(_)));
        assert!(matches!(events[2].0, WsEvent::Binary(_)));
        assert_eq!(events[3].0, WsEvent::Text);
        assert!(matches!(events[4].0, WsEvent::Close { code: Some(4000), .. }));

        // Fragmented frames built with tungstenite's frame API and a mask.
        let mut bytes = Vec::new();
        for (part, opcode, fin) in
            [(&b"abc"[..], Data::Binary, false), (b"def", Data::Continue, false), (b"g", Data::Continue, true)]
        {
            let mut frame = Frame::message(part.to_vec(), OpCode::Data(opcode), fin);
            frame.header_mut().mask = Some([0x9a, 0xbc, 0xde, 0xf0]);
            frame.format(&mut bytes).unwrap();
        }
        let events = decode_all(&mut WsDecoder::default(), bytes).unwrap();
        assert_eq!(events.last().unwrap().0, WsEvent::BinaryAssembled(b"abcdefg".to_vec()));
    }

    #[test]
    fn the_tungstenite_client_reads_what_we_send() {
        let envelope: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
        let mut input = Vec::new();
        let mut header = [0u8; MAX_HEADER_LEN];
        let deliver = [1, 3, 0, 0];
        let n = binary_header(deliver.len() + envelope.len(), &mut header);
        // The vectored write: [ws header][deliver header][envelope].
        input.extend_from_slice(&header[..n]);
        input.extend_from_slice(&deliver);
        input.extend_from_slice(&envelope);
        input.extend(binary_frame(b"small"));
        input.extend(ping_frame(b"are you there"));
        input.extend(close_frame(1003, "text is not supported"));
        let pipe = Pipe { input: Cursor::new(input), output: Vec::new() };
        let mut client = WebSocket::from_raw_socket(pipe, Role::Client, None);
        let Message::Binary(first) = client.read().unwrap() else { panic!("binary expected") };
        assert_eq!(first[..4], deliver);
        assert_eq!(first[4..], envelope[..]);
        assert_eq!(client.read().unwrap(), Message::Binary(b"small".to_vec().into()));
        assert_eq!(client.read().unwrap(), Message::Ping(b"are you there".to_vec().into()));
        let Message::Close(Some(close)) = client.read().unwrap() else { panic!("close expected") };
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1003, "text is not supported"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            let mut d = WsDecoder::new((next() % 300) as usize);
            buf.clear();
            let len = (next() % 64) as usize;
            buf.extend((0..len).map(|_| {
                let r = next();
                // Bias towards plausible first bytes and masked lengths.
                match r % 8 {
                    0 => 0x80 | ((r >> 8) as u8 & 0x8F),
                    1 => 0x80 | ((r >> 8) as u8 % 130),
                    _ => (r >> 16) as u8,
                }
            }));
            let mut rest = &mut buf[..];
            while let Ok(Some((event, consumed))) = d.decode(rest) {
                assert!(consumed > 0 && consumed <= rest.len());
                if let WsEvent::Binary(r) | WsEvent::Ping(r) | WsEvent::Pong(r) | WsEvent::Close { reason: r, .. } =
                    &event
                {
                    assert!(r.end <= consumed);
                }
                rest = &mut std::mem::take(&mut rest)[consumed..];
            }
        }
    }

    #[test]
    fn fragments_of_valid_streams_never_panic() {
        // Valid frames, cut at every position: never a panic or a wrong
        // frame boundary.
        let mut stream = client_frame(0x02, b"ab", [1, 2, 3, 4]);
        stream.extend(client_frame(0x89, b"x", [5, 6, 7, 8]));
        stream.extend(client_frame(0x80, b"cd", [9, 9, 9, 9]));
        stream.extend(client_frame(0x82, &[0x55; 200], [1, 0, 1, 0]));
        let expected = decode_all(&mut WsDecoder::default(), stream.clone()).unwrap();
        for cut in 0..stream.len() {
            let mut d = WsDecoder::default();
            let mut events = Vec::new();
            let mut buffered: Vec<u8> = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                buffered.extend_from_slice(chunk);
                while let Some((event, consumed)) = d.decode(&mut buffered).unwrap() {
                    let payload = match &event {
                        WsEvent::Binary(r) | WsEvent::Ping(r) | WsEvent::Pong(r) => buffered[r.clone()].to_vec(),
                        WsEvent::BinaryAssembled(v) => v.clone(),
                        _ => Vec::new(),
                    };
                    events.push((event, payload));
                    buffered.drain(..consumed);
                }
            }
            assert!(buffered.is_empty());
            assert_eq!(events, expected, "cut at {cut}");
        }
    }
}
