//! Protocol error codes: one stable numeric code per failure a client can
//! see, with its WebSocket close code and MQTT 5 reason code.
//!
//! Codes are grouped by hundreds: 1xx framing, 2xx envelope, 3xx
//! authentication, 4xx limits and flow control, 5xx server. A code's number,
//! name and mappings never change once released; new codes are added.

use core::fmt;

/// A protocol error code, as carried in error frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame is truncated, has reserved bits set or trailing bytes.
    MalformedFrame = 100,
    /// The frame or envelope was made for another protocol version.
    UnsupportedVersion = 101,
    /// The frame type is unknown, or not one a client may send.
    UnknownFrameType = 102,
    /// The frame is larger than the server accepts.
    FrameTooLarge = 103,
    /// A WebSocket text frame (the protocol is binary only).
    UnsupportedData = 104,
    /// The envelope failed verification (not a valid SecureEnvelope).
    InvalidEnvelope = 200,
    /// The envelope is larger than the server's maximum.
    EnvelopeTooLarge = 201,
    /// The envelope's ttl elapsed before it could be routed.
    EnvelopeExpired = 202,
    /// The destination kind or name is not valid.
    InvalidDestination = 203,
    /// The envelope's sender is not the authenticated user.
    SenderMismatch = 204,
    /// The envelope asks for something this server does not do yet
    /// (`persist-if-offline` before mailboxes exist).
    UnsupportedFeature = 205,
    /// No token was presented.
    Unauthenticated = 300,
    /// The token is malformed, signed with an unknown key, or has a wrong
    /// audience or issuer.
    InvalidToken = 301,
    /// The token has expired (or is not yet valid).
    TokenExpired = 302,
    /// The authenticated user may not do this.
    Forbidden = 303,
    /// The sender exceeded its rate limit; retry later.
    RateLimited = 400,
    /// The server (or an internal queue) is full; retry later.
    Overloaded = 401,
    /// The connection did not read its deliveries fast enough.
    SlowConsumer = 402,
    /// The connection joined too many rooms.
    RoomLimit = 403,
    /// Too many connections (globally, per user or per address).
    ConnectionLimit = 404,
    /// Leave of a room the connection is not in.
    NotAMember = 405,
    /// Every live connection of the recipient is over its outbound bound:
    /// the envelope was neither delivered nor stored; retry later.
    RecipientBusy = 406,
    /// An unexpected server fault.
    Internal = 500,
    /// The server is shutting down; reconnect elsewhere.
    ShuttingDown = 501,
    /// The connection was idle for too long.
    IdleTimeout = 502,
    /// The client did not finish its handshake in time.
    HandshakeTimeout = 503,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: &'static [ErrorCode] = &[
        Self::MalformedFrame,
        Self::UnsupportedVersion,
        Self::UnknownFrameType,
        Self::FrameTooLarge,
        Self::UnsupportedData,
        Self::InvalidEnvelope,
        Self::EnvelopeTooLarge,
        Self::EnvelopeExpired,
        Self::InvalidDestination,
        Self::SenderMismatch,
        Self::UnsupportedFeature,
        Self::Unauthenticated,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::Forbidden,
        Self::RateLimited,
        Self::Overloaded,
        Self::SlowConsumer,
        Self::RoomLimit,
        Self::ConnectionLimit,
        Self::NotAMember,
        Self::RecipientBusy,
        Self::Internal,
        Self::ShuttingDown,
        Self::IdleTimeout,
        Self::HandshakeTimeout,
    ];

    /// The stable numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Looks a numeric code up; `None` for codes this version does not know
    /// (clients should treat those as fatal for the request).
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The stable kebab-case name, used in logs, metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed-frame",
            Self::UnsupportedVersion => "unsupported-version",
            Self::UnknownFrameType => "unknown-frame-type",
            Self::FrameTooLarge => "frame-too-large",
            Self::UnsupportedData => "unsupported-data",
            Self::InvalidEnvelope => "invalid-envelope",
            Self::EnvelopeTooLarge => "envelope-too-large",
            Self::EnvelopeExpired => "envelope-expired",
            Self::InvalidDestination => "invalid-destination",
            Self::SenderMismatch => "sender-mismatch",
            Self::UnsupportedFeature => "unsupported-feature",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid-token",
            Self::TokenExpired => "token-expired",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate-limited",
            Self::Overloaded => "overloaded",
            Self::SlowConsumer => "slow-consumer",
            Self::RoomLimit => "room-limit",
            Self::ConnectionLimit => "connection-limit",
            Self::NotAMember => "not-a-member",
            Self::RecipientBusy => "recipient-busy",
            Self::Internal => "internal",
            Self::ShuttingDown => "shutting-down",
            Self::IdleTimeout => "idle-timeout",
            Self::HandshakeTimeout => "handshake-timeout",
        }
    }

    /// True if the same request may succeed when retried later, unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::Overloaded
                | Self::ConnectionLimit
                | Self::RecipientBusy
                | Self::Internal
                | Self::ShuttingDown
        )
    }

    /// True if the server closes the connection after sending this error.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::MalformedFrame
                | Self::UnsupportedVersion
                | Self::FrameTooLarge
                | Self::UnsupportedData
                | Self::Unauthenticated
                | Self::InvalidToken
                | Self::TokenExpired
                | Self::SlowConsumer
                | Self::ConnectionLimit
                | Self::ShuttingDown
                | Self::IdleTimeout
                | Self::HandshakeTimeout
        )
    }

    /// The WebSocket close code used when this error closes a connection:
    /// the RFC 6455 §7.4 code where one fits, else 4000 + the error code
    /// (the private-use range), so every close reason is distinct.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::MalformedFrame | Self::UnknownFrameType => 1002,
            Self::UnsupportedData => 1003,
            Self::InvalidEnvelope | Self::InvalidDestination => 1007,
            Self::EnvelopeExpired
            | Self::NotAMember
            | Self::SenderMismatch
            | Self::Forbidden
            | Self::RoomLimit
            | Self::UnsupportedFeature => 1008,
            Self::FrameTooLarge | Self::EnvelopeTooLarge => 1009,
            Self::Internal => 1011,
            Self::Overloaded | Self::ConnectionLimit | Self::RecipientBusy => 1013,
            Self::ShuttingDown => 1001,
            Self::UnsupportedVersion
            | Self::Unauthenticated
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::RateLimited
            | Self::SlowConsumer
            | Self::IdleTimeout
            | Self::HandshakeTimeout => 4000 + self.code(),
        }
    }

    /// The MQTT 5 reason code (OASIS MQTT 5.0 §2.4) for this error. Errors
    /// that keep the connection open ([`is_fatal`](Self::is_fatal) false)
    /// map to codes valid in PUBACK and SUBACK; fatal ones to codes valid in
    /// CONNACK (authentication, version) or DISCONNECT.
    pub const fn mqtt_reason(self) -> u8 {
        match self {
            Self::MalformedFrame => 0x81,                                            // Malformed Packet
            Self::UnsupportedVersion => 0x84,                                        // Unsupported Protocol Version
            Self::UnknownFrameType | Self::EnvelopeExpired => 0x83,                  // Implementation specific error
            Self::UnsupportedFeature => 0x83,                                        // Implementation specific error
            Self::FrameTooLarge => 0x95,                                             // Packet too large
            Self::UnsupportedData | Self::InvalidEnvelope => 0x99,                   // Payload format invalid
            Self::InvalidDestination => 0x90,                                        // Topic Name invalid
            Self::SenderMismatch | Self::Forbidden | Self::NotAMember => 0x87,       // Not authorized
            Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired => 0x86, // Bad user name or password
            Self::EnvelopeTooLarge | Self::RateLimited | Self::Overloaded => 0x97,   // Quota exceeded
            Self::SlowConsumer | Self::RoomLimit | Self::RecipientBusy => 0x97,      // Quota exceeded
            Self::ConnectionLimit => 0x9F,                                           // Connection rate exceeded
            Self::Internal => 0x80,                                                  // Unspecified error
            Self::ShuttingDown => 0x8B,                                              // Server shutting down
            Self::IdleTimeout | Self::HandshakeTimeout => 0x8D,                      // Keep Alive timeout
        }
    }

    /// The HTTP status used when this error answers an HTTP request.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired => 401,
            Self::SenderMismatch | Self::Forbidden => 403,
            Self::EnvelopeTooLarge | Self::FrameTooLarge => 413,
            Self::UnsupportedData => 415,
            Self::RateLimited | Self::ConnectionLimit | Self::RoomLimit | Self::SlowConsumer => 429,
            Self::Overloaded | Self::ShuttingDown | Self::RecipientBusy => 503,
            Self::Internal => 500,
            Self::IdleTimeout | Self::HandshakeTimeout => 408,
            Self::NotAMember => 404,
            Self::UnsupportedFeature => 422,
            Self::MalformedFrame
            | Self::UnsupportedVersion
            | Self::UnknownFrameType
            | Self::InvalidEnvelope
            | Self::EnvelopeExpired
            | Self::InvalidDestination => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_mappings_are_unique_and_stable() {
        let mut seen_codes = std::collections::HashSet::new();
        let mut seen_names = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen_codes.insert(c.code()), "duplicate code {c}");
            assert!(seen_names.insert(c.name()), "duplicate name {c}");
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            let close = c.close_code();
            assert!((1000..=1014).contains(&close) || (4000..=4999).contains(&close), "{c}");
            assert_ne!(close, 1005, "1005 must never be sent");
            assert_ne!(close, 1006, "1006 must never be sent");
            assert!(c.mqtt_reason() >= 0x80, "{c} maps to a success reason");
        }
        assert_eq!(ErrorCode::ALL.len(), 26);
        assert_eq!(ErrorCode::from_code(0), None);
        // MQTT 5 §3.4.2.1 and §3.9.3: reason codes a PUBACK or SUBACK may carry.
        const PUBACK: &[u8] = &[0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
        for &c in ErrorCode::ALL.iter().filter(|c| !c.is_fatal()) {
            assert!(PUBACK.contains(&c.mqtt_reason()), "{c} maps to {:#x}, not valid in PUBACK", c.mqtt_reason());
        }
        let mut closes = std::collections::HashMap::new();
        for &c in ErrorCode::ALL.iter().filter(|c| c.close_code() >= 4000) {
            assert_eq!(c.close_code(), 4000 + c.code());
            assert!(closes.insert(c.close_code(), c).is_none());
        }
        assert_eq!(ErrorCode::from_code(999), None);
        // Spot checks of the published table (docs/protocol.md).
        assert_eq!(ErrorCode::SenderMismatch.code(), 204);
        assert_eq!(ErrorCode::Overloaded.close_code(), 1013);
        assert_eq!(ErrorCode::RateLimited.mqtt_reason(), 0x97);
        assert_eq!(ErrorCode::SlowConsumer.close_code(), 4402);
        assert!(ErrorCode::Overloaded.is_retryable());
        assert!(!ErrorCode::SenderMismatch.is_retryable());
    }
}
