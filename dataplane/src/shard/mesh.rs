//! The cross-shard mesh: one bounded queue per (source, destination) pair
//! and one doorbell per destination shard.
//!
//! A producer pushes without locks; a full queue is reported to the caller,
//! which applies its policy (an `overloaded` error to the sender), so queues
//! never grow without bound. The consumer drains all its inbound queues in
//! batches each loop turn. It rings only when the consumer has parked: a
//! busy shard receives messages without a single syscall, an idle one is
//! woken once per batch.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use super::ids::ShardId;

/// Wakes a parked shard.
#[derive(Default)]
struct Doorbell {
    parked: AtomicBool,
    rung: AtomicBool,
    waker: AtomicWaker,
}

/// Every queue between every pair of shards, plus one lane per shard for
/// senders outside the shards ([`Mesh::outside`]: admin API, signals).
pub struct Mesh<M> {
    shards: usize,
    /// `queues[dst * (shards + 1) + src]`.
    queues: Box<[ArrayQueue<M>]>,
    doorbells: Box<[Doorbell]>,
}

impl<M> Mesh<M> {
    /// A mesh for `shards` shards with `capacity` messages per pair.
    pub fn new(shards: usize, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            shards,
            queues: (0..shards * (shards + 1)).map(|_| ArrayQueue::new(capacity)).collect(),
            doorbells: (0..shards).map(|_| Doorbell::default()).collect(),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The source id of senders that are not shards. Its lanes are
    /// multi-producer (the queues are MPMC), so any thread may use it.
    pub fn outside(&self) -> ShardId {
        ShardId(self.shards as u16)
    }

    fn queue(&self, src: ShardId, dst: ShardId) -> &ArrayQueue<M> {
        &self.queues[dst.index() * (self.shards + 1) + src.index()]
    }

    /// Sends `msg` from `src` to `dst`; gives it back if the queue is full.
    pub fn send(&self, src: ShardId, dst: ShardId, msg: M) -> Result<(), M> {
        self.queue(src, dst).push(msg)?;
        self.ring(dst);
        Ok(())
    }

    /// Wakes `dst` if it is parked.
    fn ring(&self, dst: ShardId) {
        let bell = &self.doorbells[dst.index()];
        // Pairs with the fence in `wait`: either the consumer sees our push
        // when it re-checks, or we see it parked.
        fence(Ordering::SeqCst);
        if bell.parked.load(Ordering::Relaxed) {
            bell.rung.store(true, Ordering::Release);
            bell.waker.wake();
        }
    }

    /// Messages waiting for `dst` from `src` (for metrics).
    pub fn depth(&self, src: ShardId, dst: ShardId) -> usize {
        self.queue(src, dst).len()
    }

    /// Pops up to `max` messages for `dst`, round-robin over sources, calling
    /// `f` for each; returns how many were handled.
    pub fn drain(&self, dst: ShardId, max: usize, mut f: impl FnMut(ShardId, M)) -> usize {
        let mut handled = 0;
        for src in 0..=self.shards {
            let src = ShardId(src as u16);
            let q = self.queue(src, dst);
            while handled < max {
                match q.pop() {
                    Some(m) => {
                        f(src, m);
                        handled += 1;
                    }
                    None => break,
                }
            }
        }
        handled
    }

    fn is_empty_for(&self, dst: ShardId) -> bool {
        (0..=self.shards).all(|src| self.queue(ShardId(src as u16), dst).is_empty())
    }

    /// Waits until a message for `dst` may be waiting. Returns at once if
    /// one already is.
    pub async fn wait(&self, dst: ShardId) {
        let bell = &self.doorbells[dst.index()];
        poll_fn(|cx| {
            bell.waker.register(cx.waker());
            bell.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // Re-check after publishing `parked`: a producer that pushed
            // before seeing it set would not ring.
            if bell.rung.swap(false, Ordering::AcqRel) || !self.is_empty_for(dst) {
                bell.parked.store(false, Ordering::Release);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_per_pair() {
        let mesh = Mesh::<u32>::new(2, 2);
        let (a, b) = (ShardId(0), ShardId(1));
        assert_eq!(mesh.send(a, b, 1), Ok(()));
        assert_eq!(mesh.send(a, b, 2), Ok(()));
        assert_eq!(mesh.send(a, b, 3), Err(3), "full queue gives the message back");
        assert_eq!(mesh.send(b, b, 10), Ok(()));
        assert_eq!(mesh.send(mesh.outside(), b, 20), Ok(()));
        assert_eq!(mesh.depth(a, b), 2);
        let mut got = Vec::new();
        assert_eq!(mesh.drain(b, 16, |src, m| got.push((src.0, m))), 4);
        assert_eq!(got, [(0, 1), (0, 2), (1, 10), (2, 20)]);
        assert_eq!(mesh.drain(a, 16, |_, _| panic!("nothing for shard 0")), 0);
    }

    #[test]
    fn a_parked_shard_is_woken_across_threads() {
        let mesh = Mesh::<u32>::new(2, 64);
        let consumer = {
            let mesh = mesh.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("runtime");
                rt.block_on(async move {
                    let mut seen = 0;
                    while seen < 1000 {
                        mesh.wait(ShardId(1)).await;
                        seen += mesh.drain(ShardId(1), 64, |_, _| {});
                    }
                    seen
                })
            })
        };
        for i in 0..1000 {
            while mesh.send(ShardId(0), ShardId(1), i).is_err() {
                std::thread::yield_now();
            }
        }
        assert_eq!(consumer.join().expect("consumer"), 1000);
    }
}
