//! Length-prefixed framing for byte streams (QUIC streams, raw TCP).
//!
//! Each frame is preceded by its length as a `u32` little-endian. The
//! decoder is incremental and bounded: a length above the limit is an error
//! as soon as the 4 length bytes arrive, before any body is buffered.

use crate::frame::FrameError;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The prefix to write before a frame of `len` bytes.
///
/// Panics never: frames are bounded by [`crate::limits::MAX_ENVELOPE_LEN_CEILING`],
/// far below `u32::MAX`; a larger `len` saturates, which the peer rejects.
pub fn len_prefix(len: usize) -> [u8; LEN_PREFIX] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// Splits the first complete frame off `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((frame, used)))`
/// with the frame body and the number of bytes consumed (prefix included),
/// or an error for a zero or oversized length.
pub fn split_frame(buf: &[u8], max_frame_len: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > max_frame_len {
        return Err(FrameError::TooLarge { len, max: max_frame_len });
    }
    if len == 0 {
        return Err(FrameError::Truncated { len: 0, need: crate::frame::FRAME_HEADER_LEN });
    }
    Ok(rest.get(..len).map(|frame| (frame, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn splits_complete_frames_only() {
        let buf = [3, 0, 0, 0, 1, 2, 3, 1, 0, 0, 0, 9];
        assert_eq!(split_frame(&buf, 10), Ok(Some((&buf[4..7], 7))));
        assert_eq!(split_frame(&buf[7..], 10), Ok(Some((&buf[11..12], 5))));
        assert_eq!(split_frame(&buf[..6], 10), Ok(None));
        assert_eq!(split_frame(&buf[..3], 10), Ok(None));
        assert_eq!(split_frame(&[11, 0, 0, 0], 10), Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert!(split_frame(&[0, 0, 0, 0], 10).is_err());
        assert_eq!(len_prefix(258), [2, 1, 0, 0]);
    }

    proptest! {
        #[test]
        fn frames_survive_any_chunking(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 1..10), cut in 1usize..20) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend_from_slice(&len_prefix(f.len()));
                wire.extend_from_slice(f);
            }
            // Feed the stream in chunks of `cut` bytes, as a socket would.
            let mut buffered = Vec::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buffered.extend_from_slice(chunk);
                while let Some((frame, used)) = split_frame(&buffered, 64).unwrap() {
                    got.push(frame.to_vec());
                    buffered.drain(..used);
                }
            }
            prop_assert!(buffered.is_empty());
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = split_frame(&bytes, 1024);
        }
    }
}
