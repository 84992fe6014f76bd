//! `WsDecoder::decode` driven the way the server's reader drives it: on the
//! bytes received so far, dropping the `consumed` bytes of each frame, until
//! it asks for more (`Ok(None)`) or fails. Every answer is checked against a
//! small reference model of RFC 6455 (the decoder's verdict, its frame
//! boundary, the unmasked payload, the reassembled message), plus the
//! bounds the server relies on: progress, ranges inside the frame, payloads
//! within the message limit, control payloads of at most 125 bytes, an
//! incomplete frame left untouched. The same bytes fed in two reads (cut at
//! an input-chosen point) give the same events as one read. Then the
//! encoders: their frames, masked as a client would, decode back to what
//! was encoded.
//!
//! Input: `[mode, a, b, c, d, stream…]`. `mode & 3` picks the message limit
//! (`DEFAULT_MAX_MESSAGE_LEN`, the byte `a`, or the u16 `a b`); `c d` is the
//! cut point; `a b c d` is the encoders' mask key, `c d` their close code;
//! `(mode >> 2) & 3` picks the encoded payload's length: the stream's, or
//! one around the 7/16/64-bit length boundaries.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::frontend::ws::{
    self, DEFAULT_MAX_MESSAGE_LEN, EMPTY_CLOSE_FRAME, MAX_CLOSE_REASON_LEN, MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN,
    WsDecoder, WsError, WsEvent,
};

/// The shortest client frame: 2 header bytes and the 4-byte mask key.
const MIN_CLIENT_FRAME: usize = 6;

/// A frame header read independently of the decoder.
struct Header {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    /// The 7-bit length field (126 and 127 announce 16- and 64-bit lengths).
    form: u8,
    len: u64,
    header_len: usize,
    mask: [u8; 4],
}

fn parse_header(b: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let form = b1 & 0x7F;
    let ext = match form {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let len = match ext {
        0 => u64::from(form),
        n => b.get(2..2 + n)?.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
    };
    let masked = b1 & 0x80 != 0;
    let mut header_len = 2 + ext;
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(b.get(header_len..header_len + 4)?);
        header_len += 4;
    }
    Some(Header { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0F, masked, form, len, header_len, mask })
}

/// Masks or unmasks (RFC 6455 §5.3): byte `i` XOR `mask[i % 4]`, 4 bytes
/// at a time, written in place.
fn xor_mask(bytes: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let word = u32::from_ne_bytes(mask);
    let mut out = bytes.to_vec();
    let mut chunks = out.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
    out
}

fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The reference model's state: the fragmented message in progress.
enum Partial {
    Binary(Vec<u8>),
    /// A refused text message: only its length, bounded like any message.
    Text(u64),
}

/// What the model expects from `decode` on `rest` (bytes as received).
enum Expect {
    Incomplete,
    Error,
    Frame(Header, Vec<u8>),
}

fn expect(partial: &Option<Partial>, limit: usize, rest: &[u8]) -> Expect {
    let Some(h) = parse_header(rest) else {
        return Expect::Incomplete;
    };
    if matches!(h.opcode, 3..=7 | 0xB..=0xF) || h.rsv != 0 || !h.masked {
        return Expect::Error;
    }
    if h.len >> 63 != 0 || (h.form == 126 && h.len < 126) || (h.form == 127 && h.len <= 0xFFFF) {
        return Expect::Error;
    }
    let too_long = |len: u64| len > limit as u64;
    let refused = match (h.opcode, partial) {
        (8.., _) => !h.fin || h.len > MAX_CONTROL_PAYLOAD_LEN as u64,
        (0, None) => true,
        (0, Some(Partial::Binary(so_far))) => too_long(so_far.len() as u64 + h.len),
        (0, Some(Partial::Text(so_far))) => too_long(so_far + h.len),
        (_, Some(_)) => true,
        (_, None) => too_long(h.len),
    };
    if refused {
        return Expect::Error;
    }
    let total = h.header_len + h.len as usize;
    if rest.len() < total {
        return Expect::Incomplete;
    }
    let payload = xor_mask(&rest[h.header_len..total], h.mask);
    if h.opcode == 8 {
        match payload.len() {
            0 => {}
            1 => return Expect::Error,
            _ => {
                if !is_valid_close_code(u16::from_be_bytes([payload[0], payload[1]]))
                    || std::str::from_utf8(&payload[2..]).is_err()
                {
                    return Expect::Error;
                }
            }
        }
    }
    Expect::Frame(h, payload)
}

/// A decoded event with its payload bytes (resolved from the buffer).
type Decoded = (WsEvent, Vec<u8>);

/// Decodes `stream` received in two reads, `stream[..cut]` then the rest,
/// the way the server's reader does; checks each answer against the model.
/// Returns the events and how the stream ended: `Ok(bytes left)` (waiting
/// for more) or the error.
fn run(limit: usize, stream: &[u8], cut: usize) -> (Vec<Decoded>, Result<usize, WsError>) {
    let mut decoder = WsDecoder::new(limit);
    assert_eq!(decoder.max_message_len(), limit);
    let mut partial: Option<Partial> = None;
    let mut events = Vec::new();
    let mut buf = stream[..cut].to_vec();
    let mut pos = 0;
    let mut reads = 1;
    let end = loop {
        let received = buf.len();
        let rest = &mut buf[pos..];
        let expected = expect(&partial, limit, rest);
        match decoder.decode(rest) {
            Ok(None) => {
                assert!(matches!(expected, Expect::Incomplete), "decoder waits where the model does not");
                // Nothing was changed: the bytes are as received.
                assert!(rest[..] == stream[pos..received], "an incomplete frame was modified");
                if reads == 2 {
                    break Ok(rest.len());
                }
                reads = 2;
                buf.extend_from_slice(&stream[cut..]);
            }
            Err(e) => {
                assert!(matches!(expected, Expect::Error), "decoder refuses what the model accepts: {e:?}");
                match e {
                    WsError::MessageTooLarge { len, max } => assert!(max == limit && len > max as u64, "{e:?}"),
                    WsError::ControlTooLong(len) => assert!(len > MAX_CONTROL_PAYLOAD_LEN as u64, "{e:?}"),
                    _ => {}
                }
                assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
                // The server answers with this close frame.
                let close = ws::close_frame(e.close_code(), &e.to_string());
                assert!(close.len() <= 2 + MAX_CONTROL_PAYLOAD_LEN);
                break Err(e);
            }
            Ok(Some((event, consumed))) => {
                let Expect::Frame(h, payload) = expected else {
                    panic!("decoder returns {event:?} where the model does not");
                };
                // Progress and bounds: a whole client frame, within the buffer.
                assert!(
                    consumed >= MIN_CLIENT_FRAME && consumed <= rest.len(),
                    "consumed {consumed} of {}",
                    rest.len()
                );
                assert_eq!(consumed, h.header_len + payload.len(), "frame boundary");
                let in_frame = |r: &std::ops::Range<usize>| {
                    assert!(r.start <= r.end && r.end <= consumed, "range {r:?} outside the {consumed}-byte frame");
                    rest[r.clone()].to_vec()
                };
                let payload_range = h.header_len..consumed;
                let resolved = match (&event, h.opcode) {
                    (WsEvent::Binary(r), 2) if h.fin => {
                        assert_eq!(*r, payload_range);
                        assert!(r.len() <= limit, "message of {} bytes over the limit {limit}", r.len());
                        in_frame(r)
                    }
                    (WsEvent::Fragment, 2) => {
                        partial = Some(Partial::Binary(payload.clone()));
                        Vec::new()
                    }
                    (WsEvent::Text, 1) => {
                        if !h.fin {
                            partial = Some(Partial::Text(h.len));
                        }
                        Vec::new()
                    }
                    (WsEvent::BinaryAssembled(message), 0) if h.fin => {
                        let Some(Partial::Binary(mut so_far)) = partial.take() else {
                            panic!("assembled a message that was not started");
                        };
                        so_far.extend_from_slice(&payload);
                        assert!(*message == so_far, "reassembled message");
                        assert!(message.len() <= limit, "message of {} bytes over the limit {limit}", message.len());
                        message.clone()
                    }
                    (WsEvent::Fragment, 0) => {
                        match (&mut partial, h.fin) {
                            (Some(Partial::Binary(so_far)), false) => so_far.extend_from_slice(&payload),
                            (Some(Partial::Text(_)), true) => partial = None,
                            (Some(Partial::Text(so_far)), false) => *so_far += h.len,
                            _ => panic!("continuation consumed as a fragment"),
                        }
                        Vec::new()
                    }
                    (WsEvent::Ping(r), 9) | (WsEvent::Pong(r), 0xA) => {
                        assert_eq!(*r, payload_range);
                        assert!(r.len() <= MAX_CONTROL_PAYLOAD_LEN);
                        let bytes = in_frame(r);
                        // The server answers a ping with a pong of its payload.
                        assert_eq!(ws::pong_frame(&bytes), [&[0x8A, bytes.len() as u8][..], &bytes].concat());
                        bytes
                    }
                    (WsEvent::Close { code, reason }, 8) => {
                        let reason_bytes = in_frame(reason);
                        match payload.len() {
                            0 => assert!(code.is_none() && reason.is_empty(), "{event:?}"),
                            _ => {
                                assert_eq!(*code, Some(u16::from_be_bytes([payload[0], payload[1]])));
                                assert_eq!(*reason, h.header_len + 2..consumed);
                                assert!(std::str::from_utf8(&reason_bytes).is_ok());
                            }
                        }
                        assert!(reason.len() <= MAX_CLOSE_REASON_LEN);
                        // The server echoes the code.
                        let echo = code.map_or(EMPTY_CLOSE_FRAME.to_vec(), |c| ws::close_frame(c, ""));
                        assert_eq!(echo[0], 0x88);
                        reason_bytes
                    }
                    _ => panic!("event {event:?} for opcode {:#x}, fin {}", h.opcode, h.fin),
                };
                // Unmasked in place: the payload bytes are the model's.
                assert!(rest[payload_range] == payload[..], "unmasked payload");
                assert_eq!(decoder.is_assembling(), partial.is_some());
                events.push((event, resolved));
                pos += consumed;
            }
        }
    };
    // Each event consumed at least a minimal frame: the loop is bounded.
    assert!(events.len() <= stream.len() / MIN_CLIENT_FRAME);
    (events, end)
}

/// The header length of an unmasked (server) frame.
fn server_header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// A server frame masked as a client sends it.
fn to_client(server_frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert_eq!(server_frame[1] & 0x80, 0, "server frames are not masked");
    let header_len = server_header_len(server_frame);
    let mut out = server_frame[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(xor_mask(&server_frame[header_len..], mask));
    out
}

/// Decodes one complete client frame and returns its event and payload;
/// checks that the unmasked server frame is refused and that a strict
/// prefix of the client frame waits, untouched (unless the header alone
/// is refused).
fn decode_one(limit: usize, server_frame: &[u8], mask: [u8; 4], cut: usize) -> Result<(WsEvent, Vec<u8>), WsError> {
    let mut unmasked = server_frame.to_vec();
    assert_eq!(WsDecoder::new(limit).decode(&mut unmasked), Err(WsError::Unmasked));

    let frame = to_client(server_frame, mask);
    let mut buf = frame.clone();
    let result = WsDecoder::new(limit).decode(&mut buf);

    let cut = cut % frame.len();
    let header_len = server_header_len(server_frame) + 4;
    let mut prefix = frame[..cut].to_vec();
    match WsDecoder::new(limit).decode(&mut prefix) {
        Ok(None) => assert_eq!(prefix, frame[..cut], "an incomplete frame was modified"),
        Err(e) => assert!(cut >= header_len && result == Err(e), "prefix of {cut}: {e:?}, whole frame: {result:?}"),
        Ok(Some(answer)) => panic!("a prefix of {cut} of {} bytes decoded: {answer:?}", frame.len()),
    }

    let (event, consumed) = result?.expect("a complete frame");
    assert_eq!(consumed, frame.len());
    let payload = match &event {
        WsEvent::Binary(r) | WsEvent::Ping(r) | WsEvent::Pong(r) | WsEvent::Close { reason: r, .. } => {
            buf[r.clone()].to_vec()
        }
        WsEvent::BinaryAssembled(v) => v.clone(),
        WsEvent::Text | WsEvent::Fragment => Vec::new(),
        _ => panic!("unknown event {event:?}"),
    };
    Ok((event, payload))
}

fn encoders(mode: u8, limit: usize, params: [u8; 4], stream: &[u8]) {
    let [a, b, c, d] = params;
    let mask = params;
    let cut = usize::from(u16::from_le_bytes([c, d]));
    // The stream's length, or lengths around the 7/16/64-bit boundaries.
    // (The 64-bit ones, the slowest, only for a few values of `a`.)
    let len = match (mode >> 2) & 3 {
        0 => stream.len(),
        1 => 120 + usize::from(a % 16),
        3 if a < 16 => 65_530 + usize::from(a),
        _ => 126 + usize::from(u16::from_le_bytes([a, b]) % 1024),
    };
    // The stream repeated to `len` bytes.
    let mut payload = vec![0; len];
    if !stream.is_empty() {
        for chunk in payload.chunks_mut(stream.len()) {
            chunk.copy_from_slice(&stream[..chunk.len()]);
        }
    }

    // binary_header / header_len / binary_frame agree.
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = ws::binary_header(len, &mut header);
    assert_eq!(n, ws::header_len(len));
    assert!(matches!(n, 2 | 4 | 10));
    assert_eq!(header[0], 0x82);
    let frame = ws::binary_frame(&payload);
    assert_eq!(frame.len(), n + len);
    assert_eq!(frame[..n], header[..n]);
    assert!(frame[n..] == payload[..]);

    // Round trip through the decoder, masked as a client would.
    match decode_one(limit, &frame, mask, cut) {
        Ok((WsEvent::Binary(r), bytes)) => {
            assert!(len <= limit);
            assert_eq!(r, n + 4..n + 4 + len);
            assert!(bytes == payload, "binary round trip");
        }
        Err(WsError::MessageTooLarge { len: l, max }) => assert!(len > limit && l == len as u64 && max == limit),
        other => panic!("binary frame of {len} bytes decoded as {other:?}"),
    }

    // Ping and pong: payloads cut to 125 bytes.
    let control = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD_LEN)];
    for (frame, opcode) in [(ws::ping_frame(&payload), 0x89), (ws::pong_frame(&payload), 0x8A)] {
        assert_eq!(frame[0], opcode);
        match decode_one(limit, &frame, mask, cut) {
            Ok((WsEvent::Ping(_), bytes)) if opcode == 0x89 => assert!(bytes == control),
            Ok((WsEvent::Pong(_), bytes)) if opcode == 0x8A => assert!(bytes == control),
            other => panic!("control frame {opcode:#x} decoded as {other:?}"),
        }
    }

    // Close: a code an endpoint may send, the reason cut at a char boundary.
    let code = match u16::from_le_bytes([c, d]) {
        c if is_valid_close_code(c) => c,
        c if c % 2 == 0 => 1000 + c % 4,
        c => 3000 + c % 2000,
    };
    let reason = String::from_utf8_lossy(stream);
    let mut keep = reason.len().min(MAX_CLOSE_REASON_LEN);
    while !reason.is_char_boundary(keep) {
        keep -= 1;
    }
    assert!(keep + 4 > MAX_CLOSE_REASON_LEN || keep == reason.len());
    let frame = ws::close_frame(code, &reason);
    assert_eq!(frame[0], 0x88);
    assert_eq!(frame.len(), 2 + 2 + keep);
    match decode_one(limit, &frame, mask, cut) {
        Ok((WsEvent::Close { code: Some(got), .. }, bytes)) => {
            assert_eq!(got, code);
            assert!(bytes == reason.as_bytes()[..keep], "close reason round trip");
        }
        other => panic!("close frame decoded as {other:?}"),
    }
    match decode_one(limit, &EMPTY_CLOSE_FRAME, mask, cut) {
        Ok((WsEvent::Close { code: None, reason }, _)) => assert!(reason.is_empty()),
        other => panic!("empty close frame decoded as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, a, b, c, d], stream)) = data.split_first_chunk::<5>() else {
        return;
    };
    let limit = match mode & 3 {
        1 => usize::from(a),
        2 => usize::from(u16::from_le_bytes([a, b])),
        _ => DEFAULT_MAX_MESSAGE_LEN,
    };
    let cut = usize::from(u16::from_le_bytes([c, d])) % (stream.len() + 1);

    let one_read = run(limit, stream, stream.len());
    let two_reads = run(limit, stream, cut);
    assert!(one_read == two_reads, "one read: {one_read:?}\ntwo reads cut at {cut}: {two_reads:?}");

    encoders(mode, limit, [a, b, c, d], stream);
});
