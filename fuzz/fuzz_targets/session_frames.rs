//! A client session fed arbitrary frames, outcomes, acks and clock steps.
//! Nothing panics, and what it transmits keeps the protocol's promises:
//! `accepted` entries strictly increase and never run past the last send,
//! an error names a send that was made, a close comes only right after a
//! fatal error, and nothing is transmitted after the close.
//!
//! Input: a sequence of records `op, len, bytes[len]`; `op` picks what the
//! record is (a frame, an outcome for a pending send, a flush, a delivery,
//! a clock step).

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::session::{Dedup, Event, Reply, Session, SessionConfig, Timeout, Transmit};
use switchboard_protocol::{EnvelopeId, ErrorCode, Outcome};

#[derive(Default)]
struct Wire {
    through: u64,
    closed: bool,
    last_fatal: Option<ErrorCode>,
    sends: u64,
}

impl Transmit for Wire {
    fn reply(&mut self, reply: Reply) {
        assert!(!self.closed, "transmitted after the close: {reply:?}");
        self.last_fatal = None;
        match reply {
            Reply::Accepted(c) => {
                assert!(c.through > self.through, "entry {} after {}", c.through, self.through);
                assert!(c.through <= self.sends, "entry {} past the last send {}", c.through, self.sends);
                self.through = c.through;
            }
            Reply::Error(e) => {
                if let Some(s) = e.sequence {
                    assert!(s >= 1 && s <= self.sends, "error for send {s} of {}", self.sends);
                }
                if e.code.is_fatal() {
                    self.last_fatal = Some(e.code);
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, code: ErrorCode, _reason: &'static str) {
        assert_eq!(self.last_fatal, Some(code), "a close right after its fatal error");
        self.closed = true;
    }
}

fuzz_target!(|data: &[u8]| {
    let config = SessionConfig {
        max_rooms: 2,
        send_rate_per_sec: 50,
        send_burst: 4,
        outbound_frames: 4,
        ..SessionConfig::default()
    };
    let start = Instant::now();
    let mut now = start;
    let now_ms = 1_764_000_000_000;
    let mut session = Session::new(&config, now);
    let mut dedup: Dedup = Dedup::new(Duration::from_secs(1), 8);
    let mut wire = Wire::default();
    let mut pending: Vec<(u64, EnvelopeId)> = Vec::new();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        if session.is_closing() {
            break;
        }
        match op % 6 {
            0 | 1 => {
                if bytes.get(1) == Some(&1) {
                    wire.sends += 1;
                }
                let event = session.handle_frame(&config, "alice", bytes, now, now_ms, &mut dedup, &mut wire);
                if let Event::Route { sequence, id, .. } = event {
                    assert_eq!(sequence, wire.sends, "a routed send has the last sequence");
                    pending.push((sequence, id));
                }
            }
            2 => {
                if !pending.is_empty() {
                    let (seq, id) = pending.remove(usize::from(bytes.first().copied().unwrap_or(0)) % pending.len());
                    let result = match bytes.get(1).copied().unwrap_or(0) % 3 {
                        0 => Ok(Outcome::Delivered),
                        1 => Ok(Outcome::RecipientOffline),
                        _ => Err((ErrorCode::Overloaded, "busy")),
                    };
                    session.handle_outcome(seq, id, result, &mut wire);
                }
            }
            3 => session.flush_answers(&mut wire),
            4 => {
                let _ = session.admit_delivery(&config, len, usize::from(*op >> 4), len * 10, now);
            }
            _ => {
                now += Duration::from_millis(u64::from(u16::from_le_bytes([
                    bytes.first().copied().unwrap_or(0),
                    bytes.get(1).copied().unwrap_or(0),
                ])));
                if let Timeout::Close(..) = session.handle_timeout(&config, now, 0, 0) {
                    break;
                }
            }
        }
    }
});
