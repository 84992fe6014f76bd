//! The schema-specific FlatBuffers verifier of `SecureEnvelope`: one pass
//! over the buffer that accepts exactly the buffers the `flatbuffers` crate's
//! generic verifier accepts for this schema with the options of
//! [`Envelope::parse_generic`] (depth 4, 1 + `max_metadata_entries` tables,
//! apparent size at most [`Limits::max_apparent_size`], NUL terminators
//! required), and
//! returns the fields it located.
//!
//! It owns the layout rules only: positions, offsets, alignment, bounds,
//! vtables, required fields, NUL terminators, UTF-8, the three limits. It
//! must not apply semantic rules (those are `Envelope::check`, shared by both
//! paths), allocate, panic or use `unsafe`: every read is a checked slice
//! access, so a mistake here can accept a buffer the generic verifier would
//! refuse but can never read out of bounds.
//!
//! The rules, as `flatbuffers` 25.12.19 (`src/verifier.rs`) applies them to
//! this schema; positions are relative to the first byte of the envelope:
//!
//! - Every `u32` (root offset, offsets to strings, vectors and tables, vector
//!   and string lengths, a table's `i32` vtable offset) is 4-aligned and
//!   within the buffer; the `u16` vtable length is 2-aligned and within the
//!   buffer (`get_uoffset`, `deref_soffset`, `get_u16`).
//! - Uoffsets are added to their own position (no wrap-around); the vtable is
//!   at `table - soffset`, before or after the table, anywhere in the buffer
//!   (`deref_soffset`). The vtable length is even and the vtable lies in the
//!   buffer (`visit_table`); the table's inline size is not checked. A field
//!   is absent if its slot is beyond the vtable or holds 0 (`deref`).
//! - The `RoutingHeader` struct (32 bytes) lies in the buffer; the generic
//!   verifier does not check its alignment, `Envelope::parse_generic` checks
//!   it is 8-aligned afterwards, so here it is checked in place.
//! - A string is a 4-aligned `u32` length, its bytes, then a NUL; the bytes
//!   are UTF-8. A vector is a `u32` length and its elements in the buffer.
//! - Required: `header`, `sender_user`, `destination`, and `key` and `value`
//!   of every `KeyValue`.
//! - At most 1 + `max_metadata_entries` tables: the root and one per
//!   metadata entry. Depth: the deepest table is an entry at depth 2, always
//!   within `MAX_ENVELOPE_DEPTH` (checked at compile time).
//! - Apparent size: the sum of the sizes of every range the generic verifier
//!   checks, counted again each time shared bytes are reached again, at most
//!   [`Limits::max_apparent_size`]. Counted exactly as it counts: 4 for each `u32` read,
//!   2 for the vtable length, the vtable's length, 2 for each vtable slot
//!   read, 32 for the header, the bytes of each string and vector (for the
//!   metadata vector its 4-byte entry offsets, which are then counted again
//!   as each entry's offset is read).

use super::{Envelope, EnvelopeError, HEADER_LEN, Metadata};
use crate::generated::switchboard::v_1 as fb;
use crate::limits::{Limits, MAX_ENVELOPE_DEPTH};

/// Vtable slots the generic verifier reads for a `SecureEnvelope`.
const ENVELOPE_FIELDS: usize = 7;
/// Vtable slots the generic verifier reads for a `KeyValue`.
const KEY_VALUE_FIELDS: usize = 2;

// The generic verifier counts a level per table: the root, then a metadata
// entry (the vector between them is not a level). Nothing here counts depth.
const _: () = assert!(MAX_ENVELOPE_DEPTH >= 2, "the envelope verifier needs a depth of 2");

/// Verifies the layout of `bytes` (already known to be 8..=`max_envelope_len`
/// bytes with the `SBv1` identifier) and locates its fields.
pub(super) fn verify<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, EnvelopeError> {
    let mut walk = Walk { buf: bytes, apparent: 0, max_apparent: limits.max_apparent_size() };
    let root = walk.forward(0, "root offset")?;
    // One table so far, within 1 + max_metadata_entries; depth 1.
    let table = walk.table(root, ENVELOPE_FIELDS, "root table")?;

    let Some(at) = table.field(fb::SecureEnvelope::VT_HEADER) else {
        return missing("header", table.pos);
    };
    let header = walk.array::<HEADER_LEN>(at, "header")?;
    if !at.is_multiple_of(8) {
        return Err(EnvelopeError::MisalignedHeader);
    }
    let sender = walk.required_string(&table, fb::SecureEnvelope::VT_SENDER_USER, "sender_user")?;
    let sender_device = walk.optional_string(&table, fb::SecureEnvelope::VT_SENDER_DEVICE, "sender_device")?;
    let destination = walk.required_string(&table, fb::SecureEnvelope::VT_DESTINATION, "destination")?;
    let content_type = walk.optional_string(&table, fb::SecureEnvelope::VT_CONTENT_TYPE, "content_type")?;
    let metadata = match table.field(fb::SecureEnvelope::VT_METADATA) {
        Some(at) => walk.metadata(at, limits.max_metadata_entries)?,
        None => Metadata::NONE,
    };
    let payload = match table.field(fb::SecureEnvelope::VT_PAYLOAD) {
        Some(at) => {
            let at = walk.forward(at, "payload")?;
            walk.vector(at, 1, "payload")?
        }
        None => &[],
    };
    Ok(Envelope { bytes, header, sender, sender_device, destination, content_type, metadata, payload })
}

/// The metadata entries whose entry offsets start at `slots`, verified by
/// [`verify`], read again.
pub(super) fn entries(bytes: &[u8], slots: usize, len: usize) -> impl Iterator<Item = (&str, &str)> {
    (0..len).filter_map(move |index| {
        // Limits were applied at parse; this walk only locates the strings.
        let mut walk = Walk { buf: bytes, apparent: 0, max_apparent: usize::MAX };
        let entry = walk.key_value(slots + 4 * index);
        debug_assert!(entry.is_ok(), "metadata entry {index} verified at parse: {entry:?}");
        entry.ok()
    })
}

/// The id in the header of what may be an envelope, read without verifying
/// anything else: every read is bounds-checked, and any inconsistency is
/// `None`. Only a hint (for prefetching), never a basis for a decision.
pub(super) fn peek_id(bytes: &[u8]) -> Option<[u8; 16]> {
    let u32_at = |at: usize| bytes.get(at..)?.first_chunk::<4>().map(|b| u32::from_le_bytes(*b));
    let table = usize::try_from(u32_at(0)?).ok()?;
    let back = i32::from_le_bytes(*bytes.get(table..)?.first_chunk::<4>()?);
    let vtable = usize::try_from(i64::try_from(table).ok()? - i64::from(back)).ok()?;
    let slot = vtable.checked_add(usize::from(fb::SecureEnvelope::VT_HEADER))?;
    let offset = u16::from_le_bytes(*bytes.get(slot..)?.first_chunk::<2>()?);
    if offset == 0 {
        return None;
    }
    bytes.get(table.checked_add(usize::from(offset))?..)?.first_chunk::<16>().copied()
}

/// A verification in progress.
struct Walk<'a> {
    buf: &'a [u8],
    /// Bytes counted so far, as the generic verifier counts its apparent size.
    apparent: usize,
    max_apparent: usize,
}

/// A table whose vtable lies in the buffer.
struct Table<'a> {
    pos: usize,
    /// The whole vtable, its two length fields included.
    vtable: &'a [u8],
}

impl Table<'_> {
    /// Where the field in vtable slot `voffset` is, if present.
    fn field(&self, voffset: u16) -> Option<usize> {
        let slot = self.vtable.get(usize::from(voffset)..)?.first_chunk::<2>()?;
        match u16::from_le_bytes(*slot) {
            0 => None,
            offset => Some(self.pos.saturating_add(usize::from(offset))),
        }
    }
}

impl<'a> Walk<'a> {
    /// Adds `size` bytes to the apparent size.
    fn count(&mut self, size: usize, what: &'static str, at: usize) -> Result<(), EnvelopeError> {
        self.apparent = self.apparent.saturating_add(size);
        if self.apparent > self.max_apparent {
            return malformed(what, at, "apparent size (shared objects counted each time) exceeds the envelope limit");
        }
        Ok(())
    }

    /// The `N` bytes at `at`.
    fn array<const N: usize>(&mut self, at: usize, what: &'static str) -> Result<&'a [u8; N], EnvelopeError> {
        let Some(bytes) = self.buf.get(at..).and_then(<[u8]>::first_chunk::<N>) else {
            return malformed(what, at, "runs past the end of the buffer");
        };
        self.count(N, what, at)?;
        Ok(bytes)
    }

    /// The `len` bytes at `at`.
    fn slice(&mut self, at: usize, len: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        let Some(bytes) = at.checked_add(len).and_then(|end| self.buf.get(at..end)) else {
            return malformed(what, at, "runs past the end of the buffer");
        };
        self.count(len, what, at)?;
        Ok(bytes)
    }

    /// The 4-aligned little-endian `u32` at `at` (an offset or a length).
    fn u32_at(&mut self, at: usize, what: &'static str) -> Result<u32, EnvelopeError> {
        if !at.is_multiple_of(4) {
            return malformed(what, at, "offset or length is not 4-byte aligned");
        }
        Ok(u32::from_le_bytes(*self.array(at, what)?))
    }

    /// Follows the uoffset at `at` to what it points to.
    fn forward(&mut self, at: usize, what: &'static str) -> Result<usize, EnvelopeError> {
        let offset = self.u32_at(at, what)?;
        Ok(usize::try_from(offset).unwrap_or(usize::MAX).saturating_add(at))
    }

    /// A vector at `at` of elements of `size` bytes: its elements.
    fn vector(&mut self, at: usize, size: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        let len = usize::try_from(self.u32_at(at, what)?).unwrap_or(usize::MAX);
        self.slice(at.saturating_add(4), len.saturating_mul(size), what)
    }

    /// The table at `at` with its vtable, `fields` slots of which are read.
    fn table(&mut self, at: usize, fields: usize, what: &'static str) -> Result<Table<'a>, EnvelopeError> {
        if !at.is_multiple_of(4) {
            return malformed(what, at, "table is not 4-byte aligned");
        }
        let soffset = i32::from_le_bytes(*self.array(at, what)?);
        let distance = usize::try_from(soffset.unsigned_abs()).unwrap_or(usize::MAX);
        // Signed offsets are subtracted.
        let vtable = if soffset > 0 { at.checked_sub(distance) } else { at.checked_add(distance) };
        let Some(vtable) = vtable.filter(|&v| v < self.buf.len()) else {
            return malformed(what, at, "vtable offset points outside the buffer");
        };
        if !vtable.is_multiple_of(2) {
            return malformed(what, vtable, "vtable is not 2-byte aligned");
        }
        let len = usize::from(u16::from_le_bytes(*self.array(vtable, what)?));
        if !len.is_multiple_of(2) {
            return malformed(what, vtable, "vtable length is odd");
        }
        let vtable = self.slice(vtable, len, what)?;
        // The slot of every field of the schema inside the vtable is read once.
        self.count(2 * (len.saturating_sub(4) / 2).min(fields), what, at)?;
        Ok(Table { pos: at, vtable })
    }

    /// The string the uoffset at `at` points to.
    fn string(&mut self, at: usize, what: &'static str) -> Result<&'a str, EnvelopeError> {
        let at = self.forward(at, what)?;
        let bytes = self.vector(at, 1, what)?;
        // In bounds: `vector` found `bytes` there.
        let end = at + 4 + bytes.len();
        if self.buf.get(end) != Some(&0) {
            return malformed(what, at, "string is not NUL-terminated");
        }
        core::str::from_utf8(bytes).or_else(|_| malformed(what, at, "string is not UTF-8"))
    }

    fn required_string(
        &mut self,
        table: &Table<'_>,
        voffset: u16,
        what: &'static str,
    ) -> Result<&'a str, EnvelopeError> {
        match table.field(voffset) {
            Some(at) => self.string(at, what),
            None => missing(what, table.pos),
        }
    }

    fn optional_string(
        &mut self,
        table: &Table<'_>,
        voffset: u16,
        what: &'static str,
    ) -> Result<Option<&'a str>, EnvelopeError> {
        table.field(voffset).map(|at| self.string(at, what)).transpose()
    }

    /// The metadata vector the uoffset at `at` points to, and every entry.
    fn metadata(&mut self, at: usize, max_entries: usize) -> Result<Metadata, EnvelopeError> {
        let at = self.forward(at, "metadata")?;
        let len = self.vector(at, 4, "metadata")?.len() / 4;
        // Each entry is a table: more than the table limit allows fails
        // before any is walked.
        if len > max_entries {
            return Err(EnvelopeError::TooManyMetadata { count: len, max: max_entries });
        }
        let slots = at + 4;
        for index in 0..len {
            self.key_value(slots + 4 * index)?;
        }
        Ok(Metadata::Verified { slots, len })
    }

    /// The `KeyValue` entry the uoffset at `at` points to.
    fn key_value(&mut self, at: usize) -> Result<(&'a str, &'a str), EnvelopeError> {
        let at = self.forward(at, "metadata entry")?;
        let table = self.table(at, KEY_VALUE_FIELDS, "metadata entry")?;
        let key = self.required_string(&table, fb::KeyValue::VT_KEY, "metadata key")?;
        let value = self.required_string(&table, fb::KeyValue::VT_VALUE, "metadata value")?;
        Ok((key, value))
    }
}

fn malformed<T>(what: &'static str, at: usize, reason: &'static str) -> Result<T, EnvelopeError> {
    Err(EnvelopeError::Malformed { what, at, reason })
}

fn missing<T>(what: &'static str, table: usize) -> Result<T, EnvelopeError> {
    malformed(what, table, "required field is missing")
}

#[cfg(test)]
mod tests;
