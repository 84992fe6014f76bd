//! Validated identifiers: envelope ids, user and device ids, room names and
//! destinations.
//!
//! Names are parsed at the edge into borrowed newtypes that can only hold
//! valid values ("parse, don't validate"). A valid name is 1 to N bytes of
//! `A–Z a–z 0–9` and `- _ . @ ~ = :`; this keeps names safe as MQTT topic
//! levels, URL path segments and log fields without escaping.

use core::fmt;
use core::str::FromStr;

use crate::limits::{MAX_DESTINATION_NAME_LEN, MAX_DEVICE_ID_LEN, MAX_USER_ID_LEN};

/// Why a name or id was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The name is longer than its limit.
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name holds a byte outside the allowed set.
    #[error("{what} contains a character outside [A-Za-z0-9-_.@~=:] at byte {at}")]
    BadCharacter {
        /// Which kind of name.
        what: &'static str,
        /// Byte offset of the first bad character.
        at: usize,
    },
    /// A destination is not `user:<id>`, `room:<name>` or `service:<name>`.
    #[error("destination must be user:<id>, room:<name> or service:<name>")]
    BadDestination,
    /// An envelope id is not 16 bytes or not a UUID string.
    #[error("envelope id must be a UUID (16 bytes)")]
    BadEnvelopeId,
}

/// True for the bytes allowed in names.
const fn is_name_byte(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'@' | b'~' | b'=' | b':')
}

/// [`is_name_byte`] as a table: names are checked on every envelope, and one
/// load per byte beats a chain of range comparisons.
static NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_name_byte(b as u8);
        b += 1;
    }
    t
};

fn check_name(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong { what, len: s.len(), max });
    }
    match s.bytes().position(|b| !NAME_BYTES[usize::from(b)]) {
        Some(at) => Err(IdError::BadCharacter { what, at }),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name<'a>(&'a str);

        impl<'a> $name<'a> {
            /// Validates `s`.
            pub fn parse(s: &'a str) -> Result<Self, IdError> {
                check_name($what, s, $max)?;
                Ok(Self(s))
            }

            /// Validates raw bytes (which must also be UTF-8; valid names are ASCII).
            pub fn from_bytes(b: &'a [u8]) -> Result<Self, IdError> {
                // Every allowed byte is ASCII, so checking the bytes first
                // makes the UTF-8 conversion infallible in practice.
                let s = core::str::from_utf8(b)
                    .map_err(|e| IdError::BadCharacter { what: $what, at: e.valid_up_to() })?;
                Self::parse(s)
            }

            /// Wraps a name already validated (read from a verified envelope).
            pub(crate) const fn trusted(s: &'a str) -> Self {
                Self(s)
            }

            /// The name as a string slice.
            pub const fn as_str(&self) -> &'a str {
                self.0
            }
        }

        impl fmt::Display for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name<'_> {
            fn as_ref(&self) -> &str {
                self.0
            }
        }
    };
}

name_type!(
    /// A user id, at most [`MAX_USER_ID_LEN`] bytes.
    UserId, "user id", MAX_USER_ID_LEN
);
name_type!(
    /// A device id, at most [`MAX_DEVICE_ID_LEN`] bytes.
    DeviceId, "device id", MAX_DEVICE_ID_LEN
);
name_type!(
    /// A room name, at most [`MAX_DESTINATION_NAME_LEN`] bytes.
    RoomName, "room name", MAX_DESTINATION_NAME_LEN
);
name_type!(
    /// A service name, at most [`MAX_DESTINATION_NAME_LEN`] bytes.
    ServiceName, "service name", MAX_DESTINATION_NAME_LEN
);

/// What kind of thing a destination names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestinationKind {
    /// Every live connection of one user.
    User,
    /// Every member of a room except the sending connection.
    Room,
    /// One healthy head of a service.
    Service,
}

impl DestinationKind {
    /// The wire value in `RoutingHeader.destination_kind`.
    pub const fn wire(self) -> u8 {
        match self {
            Self::User => 0,
            Self::Room => 1,
            Self::Service => 2,
        }
    }

    /// Parses the wire value.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::User),
            1 => Some(Self::Room),
            2 => Some(Self::Service),
            _ => None,
        }
    }

    /// The prefix used in text form (`user`, `room`, `service`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Room => "room",
            Self::Service => "service",
        }
    }
}

/// Where an envelope goes: a kind and a validated name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Destination<'a> {
    /// `user:<id>`.
    User(UserId<'a>),
    /// `room:<name>`.
    Room(RoomName<'a>),
    /// `service:<name>`.
    Service(ServiceName<'a>),
}

impl<'a> Destination<'a> {
    /// Validates `name` as a destination of `kind`.
    pub fn new(kind: DestinationKind, name: &'a str) -> Result<Self, IdError> {
        Ok(match kind {
            DestinationKind::User => Self::User(UserId::parse(name)?),
            DestinationKind::Room => Self::Room(RoomName::parse(name)?),
            DestinationKind::Service => Self::Service(ServiceName::parse(name)?),
        })
    }

    /// Parses the text form `user:<id>`, `room:<name>` or `service:<name>`.
    pub fn parse(s: &'a str) -> Result<Self, IdError> {
        let (kind, name) = s.split_once(':').ok_or(IdError::BadDestination)?;
        let kind = match kind {
            "user" => DestinationKind::User,
            "room" => DestinationKind::Room,
            "service" => DestinationKind::Service,
            _ => return Err(IdError::BadDestination),
        };
        Self::new(kind, name)
    }

    /// The destination's kind.
    pub const fn kind(&self) -> DestinationKind {
        match self {
            Self::User(_) => DestinationKind::User,
            Self::Room(_) => DestinationKind::Room,
            Self::Service(_) => DestinationKind::Service,
        }
    }

    /// The destination's name, without the kind prefix.
    pub const fn name(&self) -> &'a str {
        match self {
            Self::User(u) => u.as_str(),
            Self::Room(r) => r.as_str(),
            Self::Service(s) => s.as_str(),
        }
    }
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind().as_str(), self.name())
    }
}

/// A 16-byte envelope id, made by the client (UUIDv7 recommended, ULID
/// accepted) and used by servers and receivers to de-duplicate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EnvelopeId(pub [u8; 16]);

impl EnvelopeId {
    /// Length of an id on the wire.
    pub const LEN: usize = 16;

    /// Builds a UUIDv7 from a Unix timestamp in milliseconds and 10 random
    /// bytes (the caller supplies both: this crate has no clock and no RNG).
    pub const fn new_v7(unix_ms: u64, random: &[u8; 10]) -> Self {
        Self(*uuid::Builder::from_unix_timestamp_millis(unix_ms, random).as_uuid().as_bytes())
    }

    /// Reads an id from exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, IdError> {
        <[u8; 16]>::try_from(b).map(Self).map_err(|_| IdError::BadEnvelopeId)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// True for the all-zero id, which never names an envelope.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvelopeId({self})")
    }
}

impl FromStr for EnvelopeId {
    type Err = IdError;

    /// Parses a UUID in hyphenated or simple (32 hex digits) form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s).map(|u| Self(*u.as_bytes())).map_err(|_| IdError::BadEnvelopeId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_allowed_set() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b-c_d@example.com").is_ok());
        assert!(UserId::parse("tenant:42~x=y").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty { what: "user id" }));
        assert_eq!(UserId::parse("a/b"), Err(IdError::BadCharacter { what: "user id", at: 1 }));
        assert_eq!(UserId::parse("a+b").unwrap_err(), IdError::BadCharacter { what: "user id", at: 1 });
        assert!(UserId::parse("#").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("é").is_err());
        assert!(UserId::parse(&"x".repeat(MAX_USER_ID_LEN)).is_ok());
        assert_eq!(
            UserId::parse(&"x".repeat(MAX_USER_ID_LEN + 1)),
            Err(IdError::TooLong { what: "user id", len: 129, max: 128 })
        );
        assert!(DeviceId::parse(&"d".repeat(MAX_DEVICE_ID_LEN + 1)).is_err());
        assert!(UserId::from_bytes(b"\xff\xfe").is_err());
    }

    #[test]
    fn destinations_parse_and_print() {
        let d = Destination::parse("user:bob").unwrap();
        assert_eq!(d.kind(), DestinationKind::User);
        assert_eq!(d.name(), "bob");
        assert_eq!(d.to_string(), "user:bob");
        assert_eq!(Destination::parse("room:lobby:1").unwrap().name(), "lobby:1");
        assert_eq!(Destination::parse("service:billing").unwrap().kind(), DestinationKind::Service);
        assert_eq!(Destination::parse("bob"), Err(IdError::BadDestination));
        assert_eq!(Destination::parse("group:x"), Err(IdError::BadDestination));
        assert!(Destination::parse("user:").is_err());
        for k in [DestinationKind::User, DestinationKind::Room, DestinationKind::Service] {
            assert_eq!(DestinationKind::from_wire(k.wire()), Some(k));
        }
        assert_eq!(DestinationKind::from_wire(3), None);
    }

    #[test]
    fn envelope_id_v7_and_text_form() {
        let id = EnvelopeId::new_v7(0x0193_5f6a_1b2c, &[0xab; 10]);
        let u = uuid::Uuid::from_bytes(id.0);
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(&id.0[..6], &[0x01, 0x93, 0x5f, 0x6a, 0x1b, 0x2c]);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<EnvelopeId>().unwrap(), id);
        assert_eq!(text.replace('-', "").parse::<EnvelopeId>().unwrap(), id);
        assert!("not-a-uuid".parse::<EnvelopeId>().is_err());
        assert!(EnvelopeId::from_slice(&[0; 15]).is_err());
        assert!(EnvelopeId::default().is_nil());
    }
}
