//! Size bounds enforced by every decoder. The defaults are the protocol's;
//! a server may configure the envelope size limit, up to
//! [`MAX_ENVELOPE_LEN_CEILING`]. Clients should stay within the defaults.

/// Default maximum size of one envelope, in bytes (64 KiB).
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;
/// Hard ceiling for a configured [`Limits::max_envelope_len`] (16 MiB).
pub const MAX_ENVELOPE_LEN_CEILING: usize = 16 * 1024 * 1024;
/// Maximum metadata entries in one envelope.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Maximum length of a metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Maximum length of a metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 256;
/// Maximum length of a user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Maximum length of a device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Maximum length of a room or service name, in bytes.
pub const MAX_DESTINATION_NAME_LEN: usize = 128;
/// Maximum length of a content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Maximum length of the reason text in an error frame, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Maximum nesting depth the envelope verifier accepts (root, metadata
/// vector, entry).
pub const MAX_ENVELOPE_DEPTH: usize = 4;

/// Apparent-size allowance over the envelope length for the root table.
pub const APPARENT_SIZE_SLACK: usize = 64;
/// Apparent-size allowance over the envelope length per metadata entry.
pub const APPARENT_SIZE_SLACK_PER_ENTRY: usize = 32;

/// Limits applied when decoding envelopes and frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum envelope size in bytes.
    pub max_envelope_len: usize,
    /// Maximum number of metadata entries.
    pub max_metadata_entries: usize,
}

impl Limits {
    /// Limits with a different maximum envelope size, clamped to
    /// [`MAX_ENVELOPE_LEN_CEILING`].
    pub const fn with_max_envelope_len(mut self, len: usize) -> Self {
        self.max_envelope_len = if len > MAX_ENVELOPE_LEN_CEILING { MAX_ENVELOPE_LEN_CEILING } else { len };
        self
    }

    /// The apparent-size bound of FlatBuffers verification: the envelope
    /// length plus room for what the verifier counts twice in an envelope
    /// without shared objects (each table's vtable length and slots, a
    /// vtable shared by the metadata entries once per entry, each entry's
    /// offset), so that every well-formed envelope up to `max_envelope_len`
    /// bytes verifies, while a buffer whose shared objects are reached
    /// again and again still fails.
    pub const fn max_apparent_size(&self) -> usize {
        self.max_envelope_len
            .saturating_add(APPARENT_SIZE_SLACK)
            .saturating_add(APPARENT_SIZE_SLACK_PER_ENTRY.saturating_mul(self.max_metadata_entries))
    }

    /// The largest frame that can carry an envelope under these limits.
    pub const fn max_frame_len(&self) -> usize {
        crate::frame::ENVELOPE_FRAME_HEADER_LEN + self.max_envelope_len
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_envelope_len: MAX_ENVELOPE_LEN, max_metadata_entries: MAX_METADATA_ENTRIES }
    }
}
