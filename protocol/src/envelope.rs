//! The SecureEnvelope: a verified, zero-copy view ([`Envelope`]) over a
//! received buffer, and a builder for clients and tests.
//!
//! A buffer is verified once by [`Envelope::parse`]: size and identifier,
//! then the FlatBuffers layout (offsets, alignment, bounds, vtables, required
//! fields, UTF-8 and NUL-terminated strings, with explicit depth, table and
//! apparent-size limits), then the semantic checks (names, flags, metadata
//! bounds). The layout pass locates every field; the accessors return those
//! slices and allocate nothing. The payload is never interpreted.
//!
//! The layout pass is a verifier written for this one schema
//! (`envelope/verify.rs`), not the `flatbuffers` crate's generic one: the
//! generic verifier was three quarters of the 120–147 ns verify-and-read
//! cost of a 256-byte envelope (`BENCHMARKS.md`), mostly per-field
//! bookkeeping (vtable lookups through generic code, an error-trace wrapper
//! built around every field even on success). It accepts exactly the buffers
//! the generic verifier accepts with the options it used
//! (`Envelope::parse_generic`, kept as the reference): the
//! `envelope_differential` fuzz target and the tests run both on the same
//! bytes and require the same verdict, the same error code and the same
//! field values. The hand-written pass reads only through checked slices
//! and needs no `unsafe`, so a bug in it could accept a malformed buffer but
//! never read outside one.

use core::fmt;

use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};

use crate::error::ErrorCode;
use crate::generated::switchboard::v_1 as fb;
use crate::id::{Destination, DestinationKind, DeviceId, EnvelopeId, IdError, UserId};
use crate::limits::{Limits, MAX_CONTENT_TYPE_LEN, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN};

mod generic;
mod verify;

/// The FlatBuffers file identifier of protocol version 1, at bytes 4..8.
pub const FILE_IDENTIFIER: &[u8; 4] = b"SBv1";

/// Smallest possible envelope: root offset, identifier, and a table.
const MIN_ENVELOPE_LEN: usize = 8;
/// Size of the `RoutingHeader` struct.
const HEADER_LEN: usize = size_of::<fb::RoutingHeader>();

/// Per-envelope delivery flags (`RoutingHeader.flags`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeFlags(u16);

impl EnvelopeFlags {
    /// Store in the recipient's mailbox if no connection of theirs is online.
    pub const PERSIST_IF_OFFLINE: Self = Self(1 << 0);
    /// Never trigger a push notification for this envelope.
    pub const NO_PUSH: Self = Self(1 << 1);
    /// The sender wants a receipt when a recipient acknowledges delivery
    /// (receipt frames arrive in a later protocol revision; servers accept
    /// and forward the flag today).
    pub const ACK_REQUESTED: Self = Self(1 << 2);
    /// Also deliver to the sender's other connections (and, for rooms, to
    /// the sending connection itself).
    pub const ECHO_TO_SENDER: Self = Self(1 << 3);
    /// Every defined bit; the others must be zero.
    pub const ALL: Self = Self(0b1111);
    /// Names of the flags, in bit order, for text forms.
    pub const NAMES: [(&'static str, Self); 4] = [
        ("persist-if-offline", Self::PERSIST_IF_OFFLINE),
        ("no-push", Self::NO_PUSH),
        ("ack-requested", Self::ACK_REQUESTED),
        ("echo-to-sender", Self::ECHO_TO_SENDER),
    ];

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Flags from their wire bits; `None` if an undefined bit is set.
    pub const fn from_bits(bits: u16) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 { Some(Self(bits)) } else { None }
    }

    /// The wire bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Looks a flag up by its text name (`persist-if-offline`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    /// Names of the set flags, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().filter(move |(_, f)| self.contains(*f)).map(|(n, _)| n)
    }
}

impl core::ops::BitOr for EnvelopeFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for EnvelopeFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Why an envelope was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Larger than the configured maximum.
    #[error("envelope is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too short to be an envelope.
    #[error("envelope is {len} bytes, too short to be a SecureEnvelope")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The file identifier is not `SBv1`.
    #[error("not a version 1 SecureEnvelope (file identifier \"{}\", expected \"SBv1\")", .found.escape_ascii())]
    UnsupportedVersion {
        /// The four bytes found at offset 4.
        found: [u8; 4],
    },
    /// The buffer is not a well-formed SecureEnvelope FlatBuffer (offsets,
    /// alignment, bounds, vtables, strings, required fields, limits).
    #[error("envelope failed verification: {what} at byte {at}: {reason}")]
    Malformed {
        /// What was being checked (`root table`, `sender_user`, `metadata key`, …).
        what: &'static str,
        /// Position in the envelope of the offset, length or table at fault.
        at: usize,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The `flatbuffers` crate's generic verifier rejected the buffer (only
    /// from the reference path, `Envelope::parse_generic`).
    #[error("envelope failed verification: {0}")]
    Invalid(InvalidFlatbuffer),
    /// The routing header struct is not 8-byte aligned in the buffer.
    #[error("routing header is not 8-byte aligned")]
    MisalignedHeader,
    /// The envelope id is all zeros.
    #[error("envelope id is nil")]
    NilId,
    /// The sender user id is not valid.
    #[error("sender: {0}")]
    Sender(IdError),
    /// The sender device id is not valid.
    #[error("sender device: {0}")]
    SenderDevice(IdError),
    /// The destination kind is not one this version knows.
    #[error("unknown destination kind {0}")]
    UnknownDestinationKind(u8),
    /// The destination name is not valid.
    #[error("destination: {0}")]
    Destination(IdError),
    /// Undefined flag bits are set.
    #[error("undefined flag bits {0:#06x}")]
    ReservedFlags(u16),
    /// The content type is too long or not printable ASCII.
    #[error("content type must be 1..={MAX_CONTENT_TYPE_LEN} printable ASCII bytes")]
    ContentType,
    /// More metadata entries than allowed.
    #[error("{count} metadata entries, more than the limit of {max}")]
    TooManyMetadata {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A metadata key is invalid, too long or repeated, or a value too long.
    #[error("metadata entry {index}: {reason}")]
    Metadata {
        /// Index of the entry.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl EnvelopeError {
    /// The protocol error code reported to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::EnvelopeTooLarge,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::UnknownDestinationKind(_) | Self::Destination(_) => ErrorCode::InvalidDestination,
            _ => ErrorCode::InvalidEnvelope,
        }
    }
}

/// A verified SecureEnvelope, read in place.
#[derive(Clone, Copy)]
pub struct Envelope<'a> {
    bytes: &'a [u8],
    header: &'a [u8; HEADER_LEN],
    sender: &'a str,
    sender_device: Option<&'a str>,
    destination: &'a str,
    content_type: Option<&'a str>,
    metadata: Metadata,
    payload: &'a [u8],
}

/// Where the metadata entries of a verified envelope are.
#[derive(Clone, Copy)]
enum Metadata {
    /// `len` entry offsets from `slots` on, walked by [`verify`].
    Verified { slots: usize, len: usize },
    /// `len` entries, read through the generated code (only from
    /// `Envelope::parse_generic`).
    Generated { len: usize },
}

impl Metadata {
    const NONE: Self = Self::Verified { slots: 0, len: 0 };
}

impl<'a> Envelope<'a> {
    /// Verifies `bytes` as a SecureEnvelope under `limits`.
    ///
    /// This is the only place an envelope is checked: the layout (bounded
    /// depth, table count and apparent size), then ids, flags, content type
    /// and metadata. Allocates nothing.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Self, EnvelopeError> {
        check_size_and_identifier(bytes, limits)?;
        let env = verify::verify(bytes, limits)?;
        env.check(limits)?;
        Ok(env)
    }

    /// The id of what may be an envelope, read without verifying it: a
    /// hint for work that can start early (prefetching its
    /// de-duplication slot), never a basis for a decision. `None` if it
    /// cannot be read.
    pub fn peek_id(bytes: &[u8]) -> Option<EnvelopeId> {
        verify::peek_id(bytes).map(EnvelopeId)
    }

    /// Like [`parse`](Self::parse), but a failure also names the envelope's
    /// id when it could be read (the layout verified and the id is not nil),
    /// so that the answer to a bad envelope can say which one it was.
    pub fn parse_or_id(bytes: &'a [u8], limits: &Limits) -> Result<Self, (EnvelopeError, Option<EnvelopeId>)> {
        check_size_and_identifier(bytes, limits).map_err(|e| (e, None))?;
        let env = verify::verify(bytes, limits).map_err(|e| (e, None))?;
        match env.check(limits) {
            Ok(()) => Ok(env),
            Err(e) => {
                let id = env.id();
                Err((e, (!id.is_nil()).then_some(id)))
            }
        }
    }

    fn check(&self, limits: &Limits) -> Result<(), EnvelopeError> {
        if self.id().is_nil() {
            return Err(EnvelopeError::NilId);
        }
        UserId::parse(self.sender).map_err(EnvelopeError::Sender)?;
        if let Some(d) = self.sender_device {
            DeviceId::parse(d).map_err(EnvelopeError::SenderDevice)?;
        }
        let kind = self.header().destination_kind().0;
        let kind = DestinationKind::from_wire(kind).ok_or(EnvelopeError::UnknownDestinationKind(kind))?;
        Destination::new(kind, self.destination).map_err(EnvelopeError::Destination)?;
        let flags = self.header().flags();
        if EnvelopeFlags::from_bits(flags).is_none() {
            return Err(EnvelopeError::ReservedFlags(flags & !EnvelopeFlags::ALL.bits()));
        }
        if let Some(ct) = self.content_type
            && (ct.is_empty() || ct.len() > MAX_CONTENT_TYPE_LEN || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            return Err(EnvelopeError::ContentType);
        }
        if self.metadata_len() > 0 {
            self.check_metadata(limits)?;
        }
        Ok(())
    }

    fn check_metadata(&self, limits: &Limits) -> Result<(), EnvelopeError> {
        let count = self.metadata_len();
        if count > limits.max_metadata_entries {
            return Err(EnvelopeError::TooManyMetadata { count, max: limits.max_metadata_entries });
        }
        // The keys so far, to find a repeat without reading the entries
        // again; only under a limit raised above the default are the later
        // ones read again.
        let mut seen = [""; MAX_METADATA_ENTRIES];
        for (index, (key, value)) in self.metadata().enumerate() {
            let fail = |reason| Err(EnvelopeError::Metadata { index, reason });
            if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
                return fail("key must be 1..=64 bytes");
            }
            if UserId::parse(key).is_err() {
                return fail("key holds a character outside [A-Za-z0-9-_.@~=:]");
            }
            if value.len() > MAX_METADATA_VALUE_LEN {
                return fail("value is longer than 256 bytes");
            }
            let repeated = match seen.get(..index) {
                Some(earlier) => earlier.contains(&key),
                None => seen.contains(&key) || self.metadata().take(index).skip(seen.len()).any(|(k, _)| k == key),
            };
            if repeated {
                return fail("key is repeated");
            }
            if let Some(slot) = seen.get_mut(index) {
                *slot = key;
            }
        }
        Ok(())
    }

    /// The whole envelope, exactly as received: forward these bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The envelope id.
    pub fn id(&self) -> EnvelopeId {
        let mut id = [0; 16];
        id.copy_from_slice(&self.header[..16]);
        EnvelopeId(id)
    }

    /// The sender's user id (validated at parse).
    pub fn sender(&self) -> UserId<'a> {
        UserId::trusted(self.sender)
    }

    /// The sender's device id, if given.
    pub fn sender_device(&self) -> Option<DeviceId<'a>> {
        self.sender_device.map(DeviceId::trusted)
    }

    /// The destination (validated at parse).
    pub fn destination(&self) -> Destination<'a> {
        let name = self.destination;
        match self.header().destination_kind().0 {
            0 => Destination::User(UserId::trusted(name)),
            1 => Destination::Room(crate::id::RoomName::trusted(name)),
            _ => Destination::Service(crate::id::ServiceName::trusted(name)),
        }
    }

    /// Creation time set by the sender, ms since the Unix epoch.
    pub fn created_at_ms(&self) -> u64 {
        self.header().created_at_ms()
    }

    /// Lifetime in ms after creation; 0 means "the server's maximum".
    pub fn ttl_ms(&self) -> u32 {
        self.header().ttl_ms()
    }

    /// When the envelope expires (ms since the epoch), given the server's
    /// maximum ttl, which also caps a larger requested ttl.
    pub fn expires_at_ms(&self, max_ttl_ms: u32) -> u64 {
        let ttl = match self.ttl_ms() {
            0 => max_ttl_ms,
            t => t.min(max_ttl_ms),
        };
        self.created_at_ms().saturating_add(u64::from(ttl))
    }

    /// True if the envelope has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64, max_ttl_ms: u32) -> bool {
        now_ms >= self.expires_at_ms(max_ttl_ms)
    }

    /// Delivery flags.
    pub fn flags(&self) -> EnvelopeFlags {
        EnvelopeFlags(self.header().flags())
    }

    /// Priority, 0 (lowest) to 255; 128 is normal.
    pub fn priority(&self) -> u8 {
        self.header().priority()
    }

    /// MIME type of the payload, if given.
    pub fn content_type(&self) -> Option<&'a str> {
        self.content_type
    }

    /// Metadata entries in wire order.
    pub fn metadata(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (verified, generated) = match self.metadata {
            Metadata::Verified { slots, len } => (Some(verify::entries(self.bytes, slots, len)), None),
            Metadata::Generated { .. } => (None, Some(generic::entries(self.bytes))),
        };
        verified.into_iter().flatten().chain(generated.into_iter().flatten())
    }

    fn metadata_len(&self) -> usize {
        match self.metadata {
            Metadata::Verified { len, .. } | Metadata::Generated { len } => len,
        }
    }

    /// The routing header, for its accessors.
    fn header(&self) -> fb::RoutingHeader {
        fb::RoutingHeader(*self.header)
    }

    /// The opaque payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// The checks before any verifier runs: size bounds and the file identifier.
fn check_size_and_identifier(bytes: &[u8], limits: &Limits) -> Result<(), EnvelopeError> {
    if bytes.len() > limits.max_envelope_len {
        return Err(EnvelopeError::TooLarge { len: bytes.len(), max: limits.max_envelope_len });
    }
    if bytes.len() < MIN_ENVELOPE_LEN {
        return Err(EnvelopeError::Truncated { len: bytes.len() });
    }
    let found = [bytes[4], bytes[5], bytes[6], bytes[7]];
    if &found != FILE_IDENTIFIER {
        return Err(EnvelopeError::UnsupportedVersion { found });
    }
    Ok(())
}

impl fmt::Debug for Envelope<'_> {
    /// Shows the header only: payloads are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id())
            .field("sender", &self.sender())
            .field("sender_device", &self.sender_device())
            .field("destination", &self.destination())
            .field("created_at_ms", &self.created_at_ms())
            .field("ttl_ms", &self.ttl_ms())
            .field("flags", &self.flags())
            .field("priority", &self.priority())
            .field("payload_len", &self.payload().len())
            .finish_non_exhaustive()
    }
}

/// Builds SecureEnvelopes (clients, tests, the load generator).
#[derive(Debug, Clone)]
pub struct EnvelopeBuilder<'a> {
    id: EnvelopeId,
    sender: UserId<'a>,
    sender_device: Option<DeviceId<'a>>,
    destination: Destination<'a>,
    created_at_ms: u64,
    ttl_ms: u32,
    flags: EnvelopeFlags,
    priority: u8,
    content_type: Option<&'a str>,
    metadata: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
}

impl<'a> EnvelopeBuilder<'a> {
    /// Default priority.
    pub const NORMAL_PRIORITY: u8 = 128;

    /// Starts an envelope with its required fields.
    pub fn new(id: EnvelopeId, sender: UserId<'a>, destination: Destination<'a>, created_at_ms: u64) -> Self {
        Self {
            id,
            sender,
            sender_device: None,
            destination,
            created_at_ms,
            ttl_ms: 0,
            flags: EnvelopeFlags::empty(),
            priority: Self::NORMAL_PRIORITY,
            content_type: None,
            metadata: Vec::new(),
            payload: &[],
        }
    }

    /// Sets the sender's device id.
    pub fn sender_device(mut self, device: DeviceId<'a>) -> Self {
        self.sender_device = Some(device);
        self
    }

    /// Sets the ttl in milliseconds (0 = server maximum).
    pub fn ttl_ms(mut self, ttl_ms: u32) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    /// Sets the flags.
    pub fn flags(mut self, flags: EnvelopeFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the payload's MIME type.
    pub fn content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: &'a str, value: &'a str) -> Self {
        self.metadata.push((key, value));
        self
    }

    /// Sets the opaque payload.
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// Replaces the id (the load generator reuses one builder).
    pub fn id(mut self, id: EnvelopeId) -> Self {
        self.id = id;
        self
    }

    /// Builds the envelope and checks it as a server would (default limits).
    pub fn build(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut fbb = FlatBufferBuilder::with_capacity(128 + self.payload.len());
        let bytes = self.build_into(&mut fbb).to_vec();
        Envelope::parse(&bytes, &Limits::default())?;
        Ok(bytes)
    }

    /// Builds the envelope into a reusable FlatBuffers builder, without the
    /// semantic checks of [`build`](Self::build); the output is
    /// deterministic for the same inputs. Resets `fbb` first.
    pub fn build_into<'f>(&self, fbb: &'f mut FlatBufferBuilder<'_>) -> &'f [u8] {
        fbb.reset();
        let payload = fbb.create_vector(self.payload);
        let metadata = if self.metadata.is_empty() {
            None
        } else {
            let entries: Vec<_> = self
                .metadata
                .iter()
                .map(|(k, v)| {
                    let key = Some(fbb.create_string(k));
                    let value = Some(fbb.create_string(v));
                    fb::KeyValue::create(fbb, &fb::KeyValueArgs { key, value })
                })
                .collect();
            Some(fbb.create_vector(&entries))
        };
        let content_type = self.content_type.map(|c| fbb.create_string(c));
        let destination = Some(fbb.create_string(self.destination.name()));
        let sender_device = self.sender_device.map(|d| fbb.create_string(d.as_str()));
        let sender_user = Some(fbb.create_string(self.sender.as_str()));
        let header = fb::RoutingHeader::new(
            &self.id.0,
            self.created_at_ms,
            self.ttl_ms,
            self.flags.bits(),
            self.priority,
            fb::DestinationKind(self.destination.kind().wire()),
        );
        let root = fb::SecureEnvelope::create(
            fbb,
            &fb::SecureEnvelopeArgs {
                header: Some(&header),
                sender_user,
                sender_device,
                destination,
                content_type,
                metadata,
                payload: Some(payload),
            },
        );
        fb::finish_secure_envelope_buffer(fbb, root);
        fbb.finished_data()
    }
}

#[cfg(test)]
mod tests;
