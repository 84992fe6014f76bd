//! `stream::split_frame` over an arbitrary byte stream, then `Frame::decode`
//! on every frame it splits off.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::stream::{LEN_PREFIX, split_frame};
use switchboard_protocol::{Frame, Limits};

/// A small limit, so that inputs hold several complete frames.
const MAX_FRAME_LEN: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    loop {
        match split_frame(rest, MAX_FRAME_LEN) {
            Ok(Some((frame, used))) => {
                // Progress, in bounds, and the frame is the bytes after the prefix.
                assert!(used > LEN_PREFIX, "consumed {used} bytes");
                assert!(used <= rest.len(), "consumed {used} of {} bytes", rest.len());
                assert!(!frame.is_empty() && frame.len() <= MAX_FRAME_LEN);
                assert_eq!(used, LEN_PREFIX + frame.len());
                assert_eq!(frame, &rest[LEN_PREFIX..used]);
                if let Ok(decoded) = Frame::decode(frame, &limits) {
                    assert_eq!(decoded.to_vec(), frame);
                }
                rest = &rest[used..];
            }
            Ok(None) => {
                // Only an incomplete prefix or body may ask for more bytes.
                if let Some((prefix, body)) = rest.split_first_chunk::<LEN_PREFIX>() {
                    let len = u32::from_le_bytes(*prefix) as usize;
                    assert!(len > body.len() && len <= MAX_FRAME_LEN);
                }
                break;
            }
            Err(_) => {
                assert!(rest.len() >= LEN_PREFIX);
                break;
            }
        }
    }
});
