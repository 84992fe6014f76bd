//! `Frame::decode` on arbitrary bytes. The codec is canonical: a frame that
//! decodes must encode back to exactly the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data, &Limits::default()) else {
        return;
    };
    assert_eq!(frame.encoded_len(), data.len(), "encoded_len of {frame:?}");
    assert_eq!(frame.to_vec(), data, "re-encoding of {frame:?}");
    if let Frame::Error(e) = frame {
        let _ = e.error_code();
    }
});
