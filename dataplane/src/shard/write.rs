//! A connection's outbound queue and the vectored write batch built from it.
//!
//! Deliveries are queued as a refcounted handle to the sender's envelope
//! bytes; the WebSocket and deliver headers are written into a small inline
//! array, so one `writev` sends `[headers][envelope]` for many frames at once
//! without copying any envelope.

use std::collections::VecDeque;

use bytes::Bytes;
use switchboard_protocol::frame::deliver_header;

use crate::frontend::ws;

/// Largest frame stored inline (control and answer frames: `accepted` is 30
/// bytes with its WebSocket header).
pub(crate) const INLINE_LEN: usize = 46;

/// One queued outbound frame.
#[derive(Debug)]
pub(crate) enum Out {
    /// An envelope for this connection: headers are added at write time.
    Deliver { envelope: Bytes, redelivery: bool },
    /// A complete small WebSocket frame.
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    /// A complete larger WebSocket frame (errors with reasons, close).
    Owned(Vec<u8>),
}

impl Out {
    /// A complete WebSocket frame, inline when it fits.
    pub(crate) fn frame(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_LEN {
            let mut b = [0; INLINE_LEN];
            b[..bytes.len()].copy_from_slice(bytes);
            Self::Inline { len: bytes.len() as u8, bytes: b }
        } else {
            Self::Owned(bytes.to_vec())
        }
    }

    /// Bytes this frame puts on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Self::Deliver { envelope, .. } => ws::header_len(4 + envelope.len()) + 4 + envelope.len(),
            Self::Inline { len, .. } => usize::from(*len),
            Self::Owned(v) => v.len(),
        }
    }
}

/// Frames waiting to be written, with their byte count.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    frames: VecDeque<Out>,
    bytes: usize,
}

impl OutQueue {
    pub(crate) fn push(&mut self, out: Out) {
        self.bytes += out.wire_len();
        self.frames.push_back(out);
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

/// Most iovecs in one `writev` (Linux IOV_MAX is 1024).
const MAX_IOVECS: usize = 512;

/// An owned, reusable `writev` batch: the buffers it points into live as
/// long as the batch, which the runtime owns while the write is in flight.
#[derive(Default)]
pub(crate) struct WriteBatch {
    heads: Vec<[u8; INLINE_LEN]>,
    head_lens: Vec<u8>,
    envelopes: Vec<Bytes>,
    owned: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    /// Index of the first iovec not fully written.
    start: usize,
}

impl WriteBatch {
    /// True if nothing is left to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.start >= self.iov.len()
    }

    /// Moves frames from `queue` into the (empty) batch; returns how many.
    pub(crate) fn fill(&mut self, queue: &mut OutQueue) -> usize {
        debug_assert!(self.is_empty());
        self.heads.clear();
        self.head_lens.clear();
        self.envelopes.clear();
        self.owned.clear();
        self.iov.clear();
        self.start = 0;
        let mut frames = 0;
        // Pass 1: take frames and lay out the bytes; no pointer is taken yet,
        // so vectors may still grow.
        while self.heads.len() + self.envelopes.len() + self.owned.len() + 2 <= MAX_IOVECS {
            let Some(out) = queue.frames.pop_front() else { break };
            queue.bytes -= out.wire_len();
            frames += 1;
            match out {
                Out::Deliver { envelope, redelivery } => {
                    let mut ws_head = [0u8; ws::MAX_HEADER_LEN];
                    let n = ws::binary_header(4 + envelope.len(), &mut ws_head);
                    let mut head = [0u8; INLINE_LEN];
                    head[..n].copy_from_slice(&ws_head[..n]);
                    head[n..n + 4].copy_from_slice(&deliver_header(redelivery));
                    self.heads.push(head);
                    self.head_lens.push((n + 4) as u8);
                    self.envelopes.push(envelope);
                }
                Out::Inline { len, bytes } => {
                    self.heads.push(bytes);
                    self.head_lens.push(len);
                    self.envelopes.push(Bytes::new());
                }
                Out::Owned(v) => {
                    // Keep order: an empty head marks "next owned buffer".
                    self.heads.push([0; INLINE_LEN]);
                    self.head_lens.push(0);
                    self.envelopes.push(Bytes::new());
                    self.owned.push(v);
                }
            }
        }
        // Pass 2: point iovecs at the now-stable buffers.
        let mut owned = self.owned.iter();
        for ((head, &len), env) in self.heads.iter().zip(&self.head_lens).zip(&self.envelopes) {
            if len == 0 {
                let v = owned.next().expect("one owned buffer per zero-length head");
                self.iov.push(libc::iovec { iov_base: v.as_ptr() as *mut _, iov_len: v.len() });
                continue;
            }
            self.iov.push(libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: usize::from(len) });
            if !env.is_empty() {
                self.iov.push(libc::iovec { iov_base: env.as_ptr() as *mut _, iov_len: env.len() });
            }
        }
        frames
    }

    /// Calls `f` on every unwritten chunk, in order (for TLS, which
    /// encrypts the plaintext instead of handing the iovecs to the kernel).
    pub(crate) fn try_for_each_chunk<E>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        debug_assert_eq!(self.start, 0, "chunks are taken from a fresh batch");
        let mut owned = self.owned.iter();
        for ((head, &len), env) in self.heads.iter().zip(&self.head_lens).zip(&self.envelopes) {
            if len == 0 {
                if let Some(v) = owned.next() {
                    f(v)?;
                }
                continue;
            }
            f(&head[..usize::from(len)])?;
            if !env.is_empty() {
                f(env)?;
            }
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

// SAFETY: the iovecs point into `heads`, `envelopes` and `owned`, which the
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
    use super::*;

    #[test]
    fn batches_keep_order_and_survive_partial_writes() {
        let mut q = OutQueue::default();
        let env = Bytes::from_static(b"ENVELOPE");
        q.push(Out::Deliver { envelope: env.clone(), redelivery: false });
        q.push(Out::frame(b"\x82\x02hi"));
        q.push(Out::Owned(vec![b'x'; 100]));
        q.push(Out::Deliver { envelope: env, redelivery: true });
        let total = q.bytes();
        let mut b = WriteBatch::default();
        assert_eq!(b.fill(&mut q), 4);
        assert!(q.is_empty() && q.bytes() == 0);
        let mut want = vec![0x82, 12, 1, 3, 0, 0];
        want.extend_from_slice(b"ENVELOPE");
        want.extend_from_slice(b"\x82\x02hi");
        want.extend_from_slice(&[b'x'; 100]);
        want.extend_from_slice(&[0x82, 12, 1, 3, 1, 0]);
        want.extend_from_slice(b"ENVELOPE");
        assert_eq!(b.pending(), want);
        assert_eq!(total, want.len());
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
    fn chunks_match_the_iovecs() {
        let mut q = OutQueue::default();
        q.push(Out::Deliver { envelope: Bytes::from_static(b"E1"), redelivery: false });
        q.push(Out::Owned(b"owned".to_vec()));
        q.push(Out::frame(b"inline"));
        let mut b = WriteBatch::default();
        b.fill(&mut q);
        let mut chunks = Vec::new();
        b.try_for_each_chunk(|c| {
            chunks.extend_from_slice(c);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(chunks, b.pending());
        b.clear();
        assert!(b.is_empty());
    }
}
