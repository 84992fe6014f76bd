//! The reference path: the `flatbuffers` crate's generic verifier, as
//! `Envelope::parse` used it before the schema-specific one replaced it, and
//! the comparison of both, for the tests and the `envelope_differential`
//! fuzz target. Not used by the server.

use flatbuffers::VerifierOptions;

use super::{Envelope, EnvelopeError, Metadata, check_size_and_identifier, fb};
use crate::limits::{Limits, MAX_ENVELOPE_DEPTH};

impl<'a> Envelope<'a> {
    /// [`Envelope::parse`] with the `flatbuffers` crate's generic verifier
    /// instead of the schema-specific one, and the accessors reading through
    /// the generated code: the reference the schema-specific verifier is
    /// tested against. Slower; not for production use.
    #[doc(hidden)]
    pub fn parse_generic(bytes: &'a [u8], limits: &Limits) -> Result<Self, EnvelopeError> {
        check_size_and_identifier(bytes, limits)?;
        let opts = VerifierOptions {
            max_depth: MAX_ENVELOPE_DEPTH,
            // The root table plus one table per metadata entry; a buffer
            // with more fails verification before it is walked further.
            max_tables: limits.max_metadata_entries.saturating_add(1),
            max_apparent_size: limits.max_apparent_size(),
            ignore_missing_null_terminator: false,
        };
        let table = fb::root_as_secure_envelope_with_opts(&opts, bytes).map_err(EnvelopeError::Invalid)?;
        let header = table.header();
        // The Rust verifier treats structs as byte arrays and does not check
        // their alignment; stricter readers (C++, Go) do, so refuse here what
        // they would refuse after we forwarded it.
        if !(header.0.as_ptr().addr() - bytes.as_ptr().addr()).is_multiple_of(8) {
            return Err(EnvelopeError::MisalignedHeader);
        }
        let env = Self {
            bytes,
            header: &header.0,
            sender: table.sender_user(),
            sender_device: table.sender_device(),
            destination: table.destination(),
            content_type: table.content_type(),
            metadata: Metadata::Generated { len: table.metadata().map_or(0, |v| v.len()) },
            payload: table.payload().map(|v| v.bytes()).unwrap_or(&[]),
        };
        env.check(limits)?;
        Ok(env)
    }

    /// Runs [`Envelope::parse`] and [`Envelope::parse_generic`] on the same
    /// bytes and describes the first difference: in the verdict, in the
    /// error code, in the error itself when the generic path failed a
    /// semantic check (both share those), or, when both accept, in any
    /// accessor's value. `Ok(true)` if both accept, `Ok(false)` if both
    /// reject. For tests and fuzzing.
    #[doc(hidden)]
    pub fn compare_verifiers(bytes: &[u8], limits: &Limits) -> Result<bool, String> {
        match (Envelope::parse(bytes, limits), Envelope::parse_generic(bytes, limits)) {
            (Ok(fast), Ok(generic)) => {
                let (fast, generic) = (fast.reading(), generic.reading());
                if fast == generic { Ok(true) } else { Err(format!("values differ: {fast:?} vs generic {generic:?}")) }
            }
            (Err(fast), Err(generic)) => {
                let layout_only = matches!(generic, EnvelopeError::Invalid(_) | EnvelopeError::MisalignedHeader);
                if fast.code() == generic.code() && (layout_only || fast == generic) {
                    Ok(false)
                } else {
                    Err(format!("errors differ: {fast:?} vs generic {generic:?}"))
                }
            }
            (fast, generic) => Err(format!("verdicts differ: {fast:?} vs generic {generic:?}")),
        }
    }

    /// Everything the accessors return; the payload's address shows it is
    /// read in place, from the same bytes.
    fn reading(&self) -> impl PartialEq + core::fmt::Debug + 'a {
        (
            self.as_bytes().as_ptr().addr(),
            (self.id(), self.sender(), self.sender_device(), self.destination()),
            (self.created_at_ms(), self.ttl_ms(), self.flags(), self.priority()),
            self.content_type(),
            self.metadata().collect::<Vec<_>>(),
            (self.payload().as_ptr().addr(), self.payload()),
        )
    }
}

/// The metadata entries of an envelope `Envelope::parse_generic` accepted,
/// through the generated code. The generic verifier runs again (with its
/// default limits, looser than ours), to stay free of `unsafe`.
pub(super) fn entries(bytes: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let envelope = fb::root_as_secure_envelope(bytes);
    debug_assert!(envelope.is_ok(), "verified at parse: {envelope:?}");
    envelope.ok().and_then(|e| e.metadata()).into_iter().flatten().map(|kv| (kv.key(), kv.value()))
}
