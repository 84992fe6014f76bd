//! Client↔server frames and their codec.
//!
//! One frame per WebSocket binary message (or per length-prefixed chunk on a
//! QUIC stream, see [`crate::stream`]). Every frame starts with the same
//! 4-byte header:
//!
//! | byte | field    | value                                  |
//! |------|----------|----------------------------------------|
//! | 0    | version  | [`VERSION`] (1)                        |
//! | 1    | type     | [`FrameType`]                          |
//! | 2    | flags    | per type; undefined bits must be 0     |
//! | 3    | reserved | 0                                      |
//!
//! Integers are little-endian, like FlatBuffers. `send` and `deliver` carry
//! the envelope bytes right after the header, so the server forwards a
//! received envelope unchanged behind a 4-byte header it writes separately
//! ([`deliver_header`], vectored write): no re-encoding, no copy.
//! `docs/protocol.md` is the byte-level specification.

use core::fmt;

use crate::error::ErrorCode;
use crate::id::{EnvelopeId, IdError, RoomName, UserId};
use crate::limits::{Limits, MAX_REASON_LEN};

/// Protocol version carried in byte 0 of every frame.
pub const VERSION: u8 = 1;
/// Length of the common frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Bytes in front of the envelope in `send` and `deliver` frames.
pub const ENVELOPE_FRAME_HEADER_LEN: usize = FRAME_HEADER_LEN;
/// `send` flag: answer nothing for this envelope, neither `accepted` nor
/// `error` (the equivalent of MQTT QoS 0 and core NATS publish).
pub const SEND_FLAG_NO_ANSWER: u8 = 1 << 0;
/// `deliver` flag: the envelope was delivered before and not acknowledged.
pub const DELIVER_FLAG_REDELIVERY: u8 = 1 << 0;
/// `error` flag: the envelope id field is meaningful.
pub const ERROR_FLAG_ENVELOPE_ID: u8 = 1 << 0;
/// `error` flag: the request id field is meaningful.
pub const ERROR_FLAG_REQUEST_ID: u8 = 1 << 1;
/// `error` flag: the send sequence field is meaningful.
pub const ERROR_FLAG_SEQUENCE: u8 = 1 << 2;
/// Bytes of one entry of an `accepted` frame.
pub const CONFIRM_LEN: usize = 12;
/// Most entries a server puts in one `accepted` frame.
pub const MAX_CONFIRMS_PER_FRAME: usize = 64;

/// The frame types, with their wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum FrameType {
    /// Client → server: an envelope to route.
    Send = 0x01,
    /// Server → client: sends up to a sequence number were accepted.
    Accepted = 0x02,
    /// Server → client: an envelope for this connection.
    Deliver = 0x03,
    /// Client → server: every delivery up to a sequence number was processed.
    DeliveryAck = 0x04,
    /// Server → client: a request failed.
    Error = 0x05,
    /// Client → server: join a room.
    JoinRoom = 0x06,
    /// Client → server: leave a room.
    LeaveRoom = 0x07,
    /// Server → client: a join/leave request succeeded.
    Done = 0x08,
    /// Client → server: is a user online?
    PresenceQuery = 0x09,
    /// Server → client: answer to a presence query.
    PresenceResult = 0x0a,
    /// Either way: liveness probe.
    Ping = 0x0b,
    /// Either way: answer to a ping.
    Pong = 0x0c,
}

impl FrameType {
    /// Parses a wire value.
    pub const fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Send,
            0x02 => Self::Accepted,
            0x03 => Self::Deliver,
            0x04 => Self::DeliveryAck,
            0x05 => Self::Error,
            0x06 => Self::JoinRoom,
            0x07 => Self::LeaveRoom,
            0x08 => Self::Done,
            0x09 => Self::PresenceQuery,
            0x0a => Self::PresenceResult,
            0x0b => Self::Ping,
            0x0c => Self::Pong,
            _ => return None,
        })
    }

    /// True for frames a client may send to the server.
    pub const fn sent_by_client(self) -> bool {
        matches!(
            self,
            Self::Send
                | Self::DeliveryAck
                | Self::JoinRoom
                | Self::LeaveRoom
                | Self::PresenceQuery
                | Self::Ping
                | Self::Pong
        )
    }

    /// Flag bits defined for this type.
    const fn defined_flags(self) -> u8 {
        match self {
            Self::Send => SEND_FLAG_NO_ANSWER,
            Self::Deliver => DELIVER_FLAG_REDELIVERY,
            Self::Error => ERROR_FLAG_ENVELOPE_ID | ERROR_FLAG_REQUEST_ID | ERROR_FLAG_SEQUENCE,
            _ => 0,
        }
    }
}

/// What happened to an accepted envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Written to `recipients` live connections.
    Delivered,
    /// No live connection and not stored (no persist-if-offline flag).
    RecipientOffline,
    /// Stored durably in the recipient's mailbox.
    Stored,
    /// An envelope with this id was accepted before; nothing was done again.
    Duplicate,
}

impl Outcome {
    /// The wire value.
    pub const fn wire(self) -> u8 {
        match self {
            Self::Delivered => 0,
            Self::RecipientOffline => 1,
            Self::Stored => 2,
            Self::Duplicate => 3,
        }
    }

    /// Parses a wire value.
    pub const fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Delivered,
            1 => Self::RecipientOffline,
            2 => Self::Stored,
            3 => Self::Duplicate,
            _ => return None,
        })
    }

    /// Stable kebab-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RecipientOffline => "recipient-offline",
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
        }
    }
}

/// An `error` frame's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// Numeric error code; see [`ErrorFrame::error_code`].
    pub code: u16,
    /// The envelope the error concerns, if any (never the nil id).
    pub envelope_id: Option<EnvelopeId>,
    /// The request (join/leave/presence) the error answers, if any.
    pub request_id: Option<u32>,
    /// The send the error answers, by its sequence number on the
    /// connection (the first `send` is 1), if it answers a send.
    pub sequence: Option<u64>,
    /// Human-readable reason, at most [`MAX_REASON_LEN`] bytes.
    pub reason: &'a str,
}

impl ErrorFrame<'_> {
    /// The code as a known [`ErrorCode`]; `None` for a code from a newer
    /// server, which a client treats as a non-retryable failure.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

/// A decoded frame, borrowing from the received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// An envelope to route (bytes not yet verified: see
    /// [`Envelope::parse`](crate::Envelope::parse)).
    Send {
        /// True if the client wants no answer for it.
        no_answer: bool,
        /// The envelope bytes.
        envelope: &'a [u8],
    },
    /// The server took responsibility for sends, by sequence ranges.
    Accepted(Confirms<'a>),
    /// An envelope for the receiving connection.
    Deliver {
        /// True if delivered before without an ack.
        redelivery: bool,
        /// The envelope bytes, as the sender sent them.
        envelope: &'a [u8],
    },
    /// The receiver processed (stored, decrypted, …) every delivery up to
    /// and including `through` (the first `deliver` on a connection is 1).
    DeliveryAck {
        /// The last delivery sequence number acknowledged.
        through: u64,
    },
    /// A request failed.
    Error(ErrorFrame<'a>),
    /// Join a room.
    JoinRoom {
        /// Echoed in the `done` or `error` answer.
        request_id: u32,
        /// The room.
        room: RoomName<'a>,
    },
    /// Leave a room.
    LeaveRoom {
        /// Echoed in the `done` or `error` answer.
        request_id: u32,
        /// The room.
        room: RoomName<'a>,
    },
    /// A join or leave succeeded.
    Done {
        /// The request's id.
        request_id: u32,
    },
    /// Ask whether a user is online.
    PresenceQuery {
        /// Echoed in the answer.
        request_id: u32,
        /// The user.
        user: UserId<'a>,
    },
    /// Answer to a presence query.
    PresenceResult {
        /// The request's id.
        request_id: u32,
        /// The user asked about.
        user: UserId<'a>,
        /// Number of live connections (0 = offline).
        connections: u32,
    },
    /// Liveness probe; the peer answers `pong` with the same nonce.
    Ping {
        /// Opaque value to echo.
        nonce: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its type requires.
    #[error("frame truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than the limit.
    #[error("frame is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Wrong protocol version byte.
    #[error("unsupported protocol version {0} (this is version 1)")]
    UnsupportedVersion(u8),
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// Undefined flag bits, or a non-zero reserved byte or field.
    #[error("reserved bits set in a {0:?} frame")]
    Reserved(FrameType),
    /// Bytes after the end of a fixed-size frame.
    #[error("{0:?} frame has trailing bytes")]
    TrailingBytes(FrameType),
    /// A `send` or `deliver` frame without an envelope.
    #[error("{0:?} frame carries no envelope")]
    EmptyEnvelope(FrameType),
    /// A room or user name is invalid.
    #[error("{0}")]
    Name(IdError),
    /// The error reason is not UTF-8 or too long.
    #[error("error reason must be UTF-8 of at most 256 bytes")]
    BadReason,
    /// Unknown outcome value in an `accepted` frame.
    #[error("unknown outcome {0}")]
    UnknownOutcome(u8),
    /// The entries of an `accepted` frame are not in increasing order.
    #[error("accepted entries must have increasing sequence numbers")]
    Unordered,
}

impl FrameError {
    /// The protocol error code reported to the peer.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::UnknownType(_) => ErrorCode::UnknownFrameType,
            Self::Name(_) => ErrorCode::InvalidDestination,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// The 4-byte header the server writes in front of a forwarded envelope.
pub const fn deliver_header(redelivery: bool) -> [u8; FRAME_HEADER_LEN] {
    let flags = if redelivery { DELIVER_FLAG_REDELIVERY } else { 0 };
    [VERSION, FrameType::Deliver as u8, flags, 0]
}

/// The 4-byte header a client writes in front of an envelope it sends.
pub const SEND_HEADER: [u8; FRAME_HEADER_LEN] = [VERSION, FrameType::Send as u8, 0, 0];

impl<'a> Frame<'a> {
    /// Decodes one frame. Fails on anything but an exact, well-formed frame
    /// of at most `limits.max_frame_len()` bytes. Never allocates.
    pub fn decode(buf: &'a [u8], limits: &Limits) -> Result<Self, FrameError> {
        let max = limits.max_frame_len();
        if buf.len() > max {
            return Err(FrameError::TooLarge { len: buf.len(), max });
        }
        let Some((header, body)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Err(FrameError::Truncated { len: buf.len(), need: FRAME_HEADER_LEN });
        };
        let &[version, ty, flags, reserved] = header;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let ty = FrameType::from_wire(ty).ok_or(FrameError::UnknownType(ty))?;
        if reserved != 0 || flags & !ty.defined_flags() != 0 {
            return Err(FrameError::Reserved(ty));
        }
        let mut r = Reader { ty, body, total: buf.len() };
        let frame = match ty {
            FrameType::Send => Self::Send { no_answer: flags & SEND_FLAG_NO_ANSWER != 0, envelope: r.envelope()? },
            FrameType::Deliver => {
                Self::Deliver { redelivery: flags & DELIVER_FLAG_REDELIVERY != 0, envelope: r.envelope()? }
            }
            FrameType::Accepted => Self::Accepted(Confirms::parse(r.rest(), buf.len())?),
            FrameType::DeliveryAck => {
                let through = r.u64()?;
                r.end()?;
                Self::DeliveryAck { through }
            }
            FrameType::Error => {
                let code = r.u16()?;
                r.zeros(2)?;
                let request_id = r.u32()?;
                let sequence = r.u64()?;
                let envelope_id = r.id()?;
                let reason = r.rest();
                if reason.len() > MAX_REASON_LEN {
                    return Err(FrameError::BadReason);
                }
                let reason = core::str::from_utf8(reason).map_err(|_| FrameError::BadReason)?;
                let has_req = flags & ERROR_FLAG_REQUEST_ID != 0;
                let has_id = flags & ERROR_FLAG_ENVELOPE_ID != 0;
                let has_seq = flags & ERROR_FLAG_SEQUENCE != 0;
                // Absent fields must be zero; a present envelope id must not be
                // nil (nil never names an envelope), nor a present sequence 0.
                if (!has_req && request_id != 0) || (has_id == envelope_id.is_nil()) || (has_seq == (sequence == 0)) {
                    return Err(FrameError::Reserved(ty));
                }
                Self::Error(ErrorFrame {
                    code,
                    envelope_id: has_id.then_some(envelope_id),
                    request_id: has_req.then_some(request_id),
                    sequence: has_seq.then_some(sequence),
                    reason,
                })
            }
            FrameType::JoinRoom | FrameType::LeaveRoom => {
                let request_id = r.u32()?;
                let room = RoomName::from_bytes(r.rest()).map_err(FrameError::Name)?;
                if ty == FrameType::JoinRoom {
                    Self::JoinRoom { request_id, room }
                } else {
                    Self::LeaveRoom { request_id, room }
                }
            }
            FrameType::Done => {
                let request_id = r.u32()?;
                r.end()?;
                Self::Done { request_id }
            }
            FrameType::PresenceQuery => {
                let request_id = r.u32()?;
                let user = UserId::from_bytes(r.rest()).map_err(FrameError::Name)?;
                Self::PresenceQuery { request_id, user }
            }
            FrameType::PresenceResult => {
                let request_id = r.u32()?;
                let connections = r.u32()?;
                let user = UserId::from_bytes(r.rest()).map_err(FrameError::Name)?;
                Self::PresenceResult { request_id, user, connections }
            }
            FrameType::Ping | FrameType::Pong => {
                let nonce = r.u64()?;
                r.end()?;
                if ty == FrameType::Ping { Self::Ping { nonce } } else { Self::Pong { nonce } }
            }
        };
        Ok(frame)
    }

    /// The frame's type.
    pub const fn frame_type(&self) -> FrameType {
        match self {
            Self::Send { .. } => FrameType::Send,
            Self::Accepted { .. } => FrameType::Accepted,
            Self::Deliver { .. } => FrameType::Deliver,
            Self::DeliveryAck { .. } => FrameType::DeliveryAck,
            Self::Error(_) => FrameType::Error,
            Self::JoinRoom { .. } => FrameType::JoinRoom,
            Self::LeaveRoom { .. } => FrameType::LeaveRoom,
            Self::Done { .. } => FrameType::Done,
            Self::PresenceQuery { .. } => FrameType::PresenceQuery,
            Self::PresenceResult { .. } => FrameType::PresenceResult,
            Self::Ping { .. } => FrameType::Ping,
            Self::Pong { .. } => FrameType::Pong,
        }
    }

    /// Exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN
            + match self {
                Self::Send { envelope, .. } | Self::Deliver { envelope, .. } => envelope.len(),
                Self::Accepted(c) => c.bytes.len(),
                Self::DeliveryAck { .. } => 8,
                Self::Error(e) => ERROR_FIXED_LEN - FRAME_HEADER_LEN + truncate_utf8(e.reason, MAX_REASON_LEN).len(),
                Self::JoinRoom { room, .. } | Self::LeaveRoom { room, .. } => 4 + room.as_str().len(),
                Self::Done { .. } => 4,
                Self::PresenceQuery { user, .. } => 4 + user.as_str().len(),
                Self::PresenceResult { user, .. } => 8 + user.as_str().len(),
                Self::Ping { .. } | Self::Pong { .. } => 8,
            }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// An error frame's reason is cut to [`MAX_REASON_LEN`] bytes (at a
    /// character boundary) so that what is encoded always decodes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = match self {
            Self::Send { no_answer: true, .. } => SEND_FLAG_NO_ANSWER,
            Self::Deliver { redelivery: true, .. } => DELIVER_FLAG_REDELIVERY,
            Self::Error(e) => {
                (if e.envelope_id.is_some() { ERROR_FLAG_ENVELOPE_ID } else { 0 })
                    | (if e.request_id.is_some() { ERROR_FLAG_REQUEST_ID } else { 0 })
                    | (if e.sequence.is_some() { ERROR_FLAG_SEQUENCE } else { 0 })
            }
            _ => 0,
        };
        out.reserve(self.encoded_len());
        out.extend_from_slice(&[VERSION, self.frame_type() as u8, flags, 0]);
        match self {
            Self::Send { envelope, .. } | Self::Deliver { envelope, .. } => out.extend_from_slice(envelope),
            Self::Accepted(c) => out.extend_from_slice(c.bytes),
            Self::DeliveryAck { through } => out.extend_from_slice(&through.to_le_bytes()),
            Self::Error(e) => {
                out.extend_from_slice(&e.code.to_le_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&e.request_id.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&e.sequence.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&e.envelope_id.unwrap_or_default().0);
                out.extend_from_slice(truncate_utf8(e.reason, MAX_REASON_LEN).as_bytes());
            }
            Self::JoinRoom { request_id, room } | Self::LeaveRoom { request_id, room } => {
                out.extend_from_slice(&request_id.to_le_bytes());
                out.extend_from_slice(room.as_str().as_bytes());
            }
            Self::Done { request_id } => out.extend_from_slice(&request_id.to_le_bytes()),
            Self::PresenceQuery { request_id, user } => {
                out.extend_from_slice(&request_id.to_le_bytes());
                out.extend_from_slice(user.as_str().as_bytes());
            }
            Self::PresenceResult { request_id, user, connections } => {
                out.extend_from_slice(&request_id.to_le_bytes());
                out.extend_from_slice(&connections.to_le_bytes());
                out.extend_from_slice(user.as_str().as_bytes());
            }
            Self::Ping { nonce } | Self::Pong { nonce } => out.extend_from_slice(&nonce.to_le_bytes()),
        }
    }

    /// Encodes into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }
}

/// Bytes of an `error` frame before its reason.
pub const ERROR_FIXED_LEN: usize = FRAME_HEADER_LEN + 32;

/// One entry of an `accepted` frame: every send on the connection with a
/// sequence number up to and including `through` that has no answer yet was
/// accepted with `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Confirm {
    /// The last send sequence number this entry answers.
    pub through: u64,
    /// What happened to those sends.
    pub outcome: Outcome,
}

impl Confirm {
    /// The entry's 12 wire bytes: `through` u64 LE, outcome, 3 zero bytes.
    pub fn to_bytes(self) -> [u8; CONFIRM_LEN] {
        let mut b = [0u8; CONFIRM_LEN];
        b[..8].copy_from_slice(&self.through.to_le_bytes());
        b[8] = self.outcome.wire();
        b
    }
}

/// The entries of a received `accepted` frame (1 or more, `through`
/// strictly increasing), checked when the frame was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirms<'a> {
    bytes: &'a [u8],
}

impl<'a> Confirms<'a> {
    fn parse(bytes: &'a [u8], total: usize) -> Result<Self, FrameError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(CONFIRM_LEN) {
            let need = FRAME_HEADER_LEN + (bytes.len() / CONFIRM_LEN + 1) * CONFIRM_LEN;
            return Err(FrameError::Truncated { len: total, need });
        }
        let mut last = 0u64;
        for entry in bytes.chunks_exact(CONFIRM_LEN) {
            let through = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
            if entry[8] > 3 {
                return Err(FrameError::UnknownOutcome(entry[8]));
            }
            if entry[9..] != [0, 0, 0] {
                return Err(FrameError::Reserved(FrameType::Accepted));
            }
            if through <= last {
                return Err(FrameError::Unordered);
            }
            last = through;
        }
        Ok(Self { bytes })
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Confirm> + 'a {
        self.bytes.chunks_exact(CONFIRM_LEN).map(|e| Confirm {
            through: u64::from_le_bytes(e[..8].try_into().unwrap_or_default()),
            // Checked in `parse`.
            outcome: Outcome::from_wire(e[8]).unwrap_or(Outcome::Delivered),
        })
    }

    /// The last sequence number answered (the last entry's `through`).
    pub fn through(&self) -> u64 {
        self.iter().last().map_or(0, |c| c.through)
    }
}

/// Appends an `accepted` frame with `entries` (1..=[`MAX_CONFIRMS_PER_FRAME`],
/// `through` strictly increasing) to `out`.
pub fn encode_accepted(entries: &[Confirm], out: &mut Vec<u8>) {
    debug_assert!(!entries.is_empty() && entries.len() <= MAX_CONFIRMS_PER_FRAME);
    out.reserve(FRAME_HEADER_LEN + entries.len() * CONFIRM_LEN);
    out.extend_from_slice(&[VERSION, FrameType::Accepted as u8, 0, 0]);
    for e in entries {
        out.extend_from_slice(&e.to_bytes());
    }
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary (for reasons and other bounded text fields).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cursor over a frame body; every read is bounds-checked.
struct Reader<'a> {
    ty: FrameType,
    body: &'a [u8],
    total: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        match self.body.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.body = rest;
                Ok(*head)
            }
            None => Err(FrameError::Truncated { len: self.total, need: self.total - self.body.len() + N }),
        }
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.take().map(u64::from_le_bytes)
    }

    fn id(&mut self) -> Result<EnvelopeId, FrameError> {
        self.take().map(EnvelopeId)
    }

    fn zeros(&mut self, n: usize) -> Result<(), FrameError> {
        for _ in 0..n {
            if self.u8()? != 0 {
                return Err(FrameError::Reserved(self.ty));
            }
        }
        Ok(())
    }

    fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.body)
    }

    fn envelope(&mut self) -> Result<&'a [u8], FrameError> {
        match self.rest() {
            [] => Err(FrameError::EmptyEnvelope(self.ty)),
            env => Ok(env),
        }
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.body.is_empty() { Ok(()) } else { Err(FrameError::TrailingBytes(self.ty)) }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
