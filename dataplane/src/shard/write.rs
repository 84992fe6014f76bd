//! A connection's outbound queue, transport-neutral, and the WebSocket
//! encoder that turns it into vectored write batches.
//!
//! The queue holds what the shard and the session decided to send
//! ([`Out`]): deliveries as a refcounted handle to the sender's envelope
//! bytes, answers as [`Reply`] values. Only [`WriteBatch::fill`] knows
//! WebSocket: it writes the headers and small frames into one byte buffer,
//! merges consecutive `accepted` answers into one frame, and points one
//! `writev` at `[headers][envelope][headers]...` without copying any
//! envelope. Another transport (MQTT, QUIC) brings its own encoder for the
//! same queue.

use std::collections::VecDeque;

use bytes::Bytes;
use switchboard_protocol::ErrorCode;
use switchboard_protocol::frame::{
    CONFIRM_LEN, Confirm, ERROR_FIXED_LEN, ErrorFrame, FRAME_HEADER_LEN, MAX_CONFIRMS_PER_FRAME, deliver_header,
    encode_accepted, truncate_utf8,
};
use switchboard_protocol::limits::MAX_REASON_LEN;
use switchboard_protocol::session::Reply;
use switchboard_protocol::{Frame, UserId};

use crate::frontend::ws;

/// One queued outbound item.
#[derive(Debug)]
pub(crate) enum Out {
    /// An envelope for this connection.
    Deliver { envelope: Bytes, redelivery: bool },
    /// An answer from the session or the shard.
    Reply(Reply),
    /// A transport-level liveness probe.
    Ping,
    /// Close the connection with this code (the last item queued).
    Close { code: ErrorCode, reason: &'static str },
    /// Bytes already encoded for the transport (the WebSocket upgrade
    /// response, a close echo, a pong); empty = only flush TLS output.
    Raw(Vec<u8>),
}

impl Out {
    /// Bytes this item puts on the wire, or about that many for answers
    /// (what counts against the connection's queue bound).
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Self::Deliver { envelope, .. } => ws::header_len(4 + envelope.len()) + 4 + envelope.len(),
            Self::Reply(r) => 2 + reply_len(r),
            Self::Ping => 4,
            Self::Close { reason, .. } => 4 + reason.len(),
            Self::Raw(v) => v.len(),
        }
    }
}

/// The encoded length of a reply's frame (an `accepted` alone).
fn reply_len(reply: &Reply) -> usize {
    match reply {
        Reply::Accepted(_) => FRAME_HEADER_LEN + CONFIRM_LEN,
        Reply::Error(e) => ERROR_FIXED_LEN + truncate_utf8(e.reason, MAX_REASON_LEN).len(),
        Reply::Presence { user, .. } => FRAME_HEADER_LEN + 8 + user.len(),
        Reply::Pong { .. } => FRAME_HEADER_LEN + 8,
        _ => FRAME_HEADER_LEN + 4,
    }
}

/// Items waiting to be written, with their byte count.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    items: VecDeque<Out>,
    bytes: usize,
}

impl OutQueue {
    pub(crate) fn push(&mut self, out: Out) {
        self.bytes += out.wire_len();
        self.items.push_back(out);
    }

    fn pop(&mut self) -> Option<Out> {
        let out = self.items.pop_front()?;
        self.bytes -= out.wire_len();
        Some(out)
    }

    /// How many `accepted` answers lead the queue (at most `max`).
    fn leading_accepted(&self, max: usize) -> usize {
        self.items.iter().take(max).take_while(|o| matches!(o, Out::Reply(Reply::Accepted(_)))).count()
    }

    fn pop_accepted(&mut self) -> Option<Confirm> {
        match self.items.front() {
            Some(Out::Reply(Reply::Accepted(c))) => {
                let c = *c;
                self.pop();
                Some(c)
            }
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops everything queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

/// Most iovecs in one `writev` (Linux IOV_MAX is 1024).
const MAX_IOVECS: usize = 512;

/// Raw items up to this size are copied into the batch's byte buffer.
const COPY_RAW_LEN: usize = 512;

/// A piece of a batch, in write order.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// `bytes[start..end]`.
    Bytes { start: usize, end: usize },
    /// `envelopes[i]`.
    Envelope(usize),
    /// `owned[i]`.
    Owned(usize),
}

/// An owned, reusable `writev` batch: the buffers it points into live as
/// long as the batch, which the runtime owns while the write is in flight.
#[derive(Default)]
pub(crate) struct WriteBatch {
    /// Headers and small frames, back to back.
    bytes: Vec<u8>,
    segs: Vec<Seg>,
    envelopes: Vec<Bytes>,
    owned: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    /// Index of the first iovec not fully written.
    start: usize,
    /// Start of the bytes not yet in a segment.
    unsegmented: usize,
}

impl WriteBatch {
    /// True if nothing is left to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.start >= self.iov.len()
    }

    /// Makes the bytes appended since the last segment a segment.
    fn close_bytes(&mut self) {
        let end = self.bytes.len();
        if end > self.unsegmented {
            self.segs.push(Seg::Bytes { start: self.unsegmented, end });
            self.unsegmented = end;
        }
    }

    /// Appends a WebSocket binary frame header for a `len`-byte message.
    fn ws_header(&mut self, len: usize) {
        let mut head = [0u8; ws::MAX_HEADER_LEN];
        let n = ws::binary_header(len, &mut head);
        self.bytes.extend_from_slice(&head[..n]);
    }

    /// Encodes one answer as a WebSocket message; `accepted` answers that
    /// follow it in `queue` join the same frame (up to
    /// [`MAX_CONFIRMS_PER_FRAME`] entries).
    fn reply(&mut self, reply: &Reply, queue: &mut OutQueue) {
        let frame = match reply {
            Reply::Accepted(first) => {
                // Counted first, so the entries go straight from the queue
                // behind the WebSocket header (no array of entries).
                let more = queue.leading_accepted(MAX_CONFIRMS_PER_FRAME - 1);
                self.ws_header(FRAME_HEADER_LEN + (1 + more) * CONFIRM_LEN);
                encode_accepted(std::slice::from_ref(first), &mut self.bytes);
                for _ in 0..more {
                    if let Some(c) = queue.pop_accepted() {
                        self.bytes.extend_from_slice(&c.to_bytes());
                    }
                }
                return;
            }
            Reply::Error(e) => Frame::Error(ErrorFrame {
                code: e.code.code(),
                envelope_id: e.id,
                request_id: e.request_id,
                sequence: e.sequence,
                reason: e.reason,
            }),
            Reply::Done { request_id } => Frame::Done { request_id: *request_id },
            Reply::Presence { request_id, connections, user } => match UserId::parse(user) {
                Ok(user) => Frame::PresenceResult { request_id: *request_id, user, connections: *connections },
                // The name came from a decoded query, so it parses.
                Err(_) => Frame::Done { request_id: *request_id },
            },
            Reply::Pong { nonce } => Frame::Pong { nonce: *nonce },
            _ => return,
        };
        self.ws_header(frame.encoded_len());
        frame.encode(&mut self.bytes);
    }

    /// Moves items from `queue` into the (empty) batch, encoded for
    /// WebSocket; returns how many were taken.
    pub(crate) fn fill(&mut self, queue: &mut OutQueue) -> usize {
        debug_assert!(self.is_empty());
        self.bytes.clear();
        self.segs.clear();
        self.envelopes.clear();
        self.owned.clear();
        self.iov.clear();
        self.start = 0;
        self.unsegmented = 0;
        let mut items = 0;
        // Pass 1: encode and lay out; no pointer is taken yet, so the
        // vectors may still grow.
        while self.segs.len() + 3 <= MAX_IOVECS {
            let Some(out) = queue.pop() else { break };
            items += 1;
            match out {
                Out::Deliver { envelope, redelivery } => {
                    self.ws_header(4 + envelope.len());
                    self.bytes.extend_from_slice(&deliver_header(redelivery));
                    self.close_bytes();
                    self.segs.push(Seg::Envelope(self.envelopes.len()));
                    self.envelopes.push(envelope);
                }
                Out::Reply(r) => self.reply(&r, queue),
                Out::Ping => self.bytes.extend_from_slice(&ws::ping_frame(b"sb")),
                Out::Close { code, reason } => {
                    self.bytes.extend_from_slice(&ws::close_frame(code.close_code(), reason));
                }
                Out::Raw(v) if v.len() <= COPY_RAW_LEN => self.bytes.extend_from_slice(&v),
                Out::Raw(v) => {
                    self.close_bytes();
                    self.segs.push(Seg::Owned(self.owned.len()));
                    self.owned.push(v);
                }
            }
        }
        self.close_bytes();
        // Pass 2: point iovecs at the now-stable buffers.
        for seg in &self.segs {
            let (ptr, len) = match *seg {
                Seg::Bytes { start, end } => (self.bytes[start..end].as_ptr(), end - start),
                Seg::Envelope(i) => (self.envelopes[i].as_ptr(), self.envelopes[i].len()),
                Seg::Owned(i) => (self.owned[i].as_ptr(), self.owned[i].len()),
            };
            if len > 0 {
                self.iov.push(libc::iovec { iov_base: ptr as *mut _, iov_len: len });
            }
        }
        items
    }

    /// Calls `f` on every unwritten chunk, in order (for TLS, which
    /// encrypts the plaintext instead of handing the iovecs to the kernel).
    pub(crate) fn try_for_each_chunk<E>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        debug_assert_eq!(self.start, 0, "chunks are taken from a fresh batch");
        for iov in &self.iov {
            // SAFETY: every iovec points into a buffer owned by the batch,
            // unchanged since `fill`.
            f(unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) })?;
        }
        Ok(())
    }

    /// Marks everything as written.
    pub(crate) fn clear(&mut self) {
        self.start = self.iov.len();
    }

    /// Records that `n` bytes were written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.iov.len() {
            let iov = &mut self.iov[self.start];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                self.start += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same
                // buffer, which the batch keeps alive.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
    }

    /// The unwritten bytes, for tests.
    #[cfg(test)]
    fn pending(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for iov in &self.iov[self.start..] {
            // SAFETY: every iovec points into a buffer owned by the batch.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) });
        }
        v
    }
}

// SAFETY: the iovecs point into `bytes`, `envelopes` and `owned`, which the
// batch owns and does not modify while the runtime holds it (during a
// `writev`); moving the batch moves only the vectors' headers, not their heap
// buffers, so the pointers stay valid.
unsafe impl monoio::buf::IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

// SAFETY: as for `WriteBatch`; the box keeps the batch (and so the iovec
// array and the buffers) at one heap address while the runtime holds it.
unsafe impl monoio::buf::IoVecBuf for Box<WriteBatch> {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        (**self).read_iovec_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        (**self).read_iovec_len()
    }
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::frame::FrameType;
    use switchboard_protocol::session::Reply;
    use switchboard_protocol::{EnvelopeId, Limits, Outcome};

    use super::*;

    fn accepted(through: u64, outcome: Outcome) -> Out {
        Out::Reply(Reply::Accepted(Confirm { through, outcome }))
    }

    /// Splits WebSocket binary messages (server frames: unmasked).
    fn messages(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (len, h) = match b[1] {
                126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
                n => (usize::from(n), 2),
            };
            out.push(b[h..h + len].to_vec());
            b = &b[h + len..];
        }
        out
    }

    #[test]
    fn batches_keep_order_and_survive_partial_writes() {
        let mut q = OutQueue::default();
        let env = Bytes::from_static(b"ENVELOPE");
        q.push(Out::Deliver { envelope: env.clone(), redelivery: false });
        q.push(Out::Raw(b"\x82\x02hi".to_vec()));
        q.push(Out::Raw(vec![b'x'; 1000]));
        q.push(Out::Deliver { envelope: env, redelivery: true });
        let mut b = WriteBatch::default();
        assert_eq!(b.fill(&mut q), 4);
        assert!(q.is_empty() && q.bytes() == 0);
        let mut want = vec![0x82, 12, 1, 3, 0, 0];
        want.extend_from_slice(b"ENVELOPE");
        want.extend_from_slice(b"\x82\x02hi");
        want.extend_from_slice(&[b'x'; 1000]);
        want.extend_from_slice(&[0x82, 12, 1, 3, 1, 0]);
        want.extend_from_slice(b"ENVELOPE");
        assert_eq!(b.pending(), want);
        // Write it in awkward pieces.
        let mut written = 0;
        for step in [1, 5, 3, 50, 7] {
            b.advance(step);
            written += step;
            assert_eq!(b.pending(), want[written..]);
        }
        b.advance(want.len() - written);
        assert!(b.is_empty());
    }

    #[test]
    fn consecutive_answers_become_one_accepted_frame() {
        let mut q = OutQueue::default();
        q.push(accepted(2, Outcome::Delivered));
        q.push(accepted(3, Outcome::RecipientOffline));
        q.push(Out::Deliver { envelope: Bytes::from_static(b"E"), redelivery: false });
        for i in 0..70 {
            q.push(accepted(10 + i * 2, if i % 2 == 0 { Outcome::Delivered } else { Outcome::Duplicate }));
        }
        let mut b = WriteBatch::default();
        b.fill(&mut q);
        assert!(q.is_empty() && q.bytes() == 0);
        let msgs = messages(&b.pending());
        assert_eq!(msgs.len(), 4, "2 entries, the delivery, 64 entries, 6 entries");
        let l = Limits::default();
        let entries = |m: &[u8]| match Frame::decode(m, &l) {
            Ok(Frame::Accepted(c)) => c.iter().collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            entries(&msgs[0]),
            [
                Confirm { through: 2, outcome: Outcome::Delivered },
                Confirm { through: 3, outcome: Outcome::RecipientOffline }
            ]
        );
        assert_eq!(msgs[1], [1, 3, 0, 0, b'E']);
        assert_eq!(entries(&msgs[2]).len(), MAX_CONFIRMS_PER_FRAME);
        assert_eq!(entries(&msgs[3]).len(), 6);
        assert_eq!(entries(&msgs[3]).last().unwrap().through, 10 + 69 * 2);
    }

    #[test]
    fn answers_and_control_items_encode_as_websocket_frames() {
        let mut q = OutQueue::default();
        let id = EnvelopeId([7; 16]);
        q.push(Out::Reply(Reply::error(ErrorCode::SenderMismatch, Some(id), None, Some(4), "no")));
        q.push(Out::Reply(Reply::Done { request_id: 9 }));
        q.push(Out::Reply(Reply::Presence { request_id: 1, connections: 2, user: "bob".into() }));
        q.push(Out::Reply(Reply::Pong { nonce: 5 }));
        q.push(Out::Ping);
        q.push(Out::Close { code: ErrorCode::IdleTimeout, reason: "no traffic" });
        let mut b = WriteBatch::default();
        b.fill(&mut q);
        let mut chunks = Vec::new();
        b.try_for_each_chunk(|c| {
            chunks.extend_from_slice(c);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(chunks, b.pending());
        let bytes = b.pending();
        let l = Limits::default();
        let mut rest = &bytes[..];
        let mut types = Vec::new();
        for _ in 0..4 {
            let m = messages(rest).remove(0);
            rest = &rest[2 + m.len()..];
            types.push(Frame::decode(&m, &l).unwrap().frame_type());
            if let Ok(Frame::Error(e)) = Frame::decode(&m, &l) {
                assert_eq!((e.sequence, e.envelope_id), (Some(4), Some(id)));
            }
        }
        assert_eq!(types, [FrameType::Error, FrameType::Done, FrameType::PresenceResult, FrameType::Pong]);
        let mut control = ws::ping_frame(b"sb");
        control.extend_from_slice(&ws::close_frame(ErrorCode::IdleTimeout.close_code(), "no traffic"));
        assert_eq!(rest, control);
        b.clear();
        assert!(b.is_empty());
    }
}
