//! The message every target carries: a payload of exactly the requested
//! size (`--size`) that starts with a [`Stamp`] (pair, sequence number,
//! send time). For Switchboard the payload goes into a SecureEnvelope
//! ([`Body::Envelope`]), which is larger by its header (id, sender,
//! destination, timestamps); Mosquitto and nats-server carry the payload
//! as their message ([`Body::Bare`]), in their own framing. So every target
//! moves the same application bytes, and each pays its own protocol's
//! overhead on top.
//!
//! Each sender builds its message once ([`Template`]) and patches the id (if
//! it has one) and the stamp in place for every message, so sending
//! allocates nothing. User names have a fixed width (`lt-s-000042`), so
//! every pair's envelope has the same [`Layout`] and a receiver finds the
//! stamp at a fixed offset without parsing the envelope.
//!
//! Pure: no clock, no I/O.

use anyhow::{Context, bail, ensure};
use switchboard_protocol::{Destination, DestinationKind, Envelope, EnvelopeBuilder, EnvelopeId, Limits, UserId};

/// Bytes of the stamp at the start of the payload.
pub const STAMP_LEN: usize = 24;
/// First bytes of every stamp.
const STAMP_MAGIC: [u8; 4] = *b"LTv1";
/// Largest pair index (user names have six digits).
pub const MAX_PAIRS: usize = 999_999;

/// The sender's user id for pair `pair`.
pub fn sender_user(pair: usize) -> String {
    format!("lt-s-{pair:06}")
}

/// The receiver's user id for pair `pair`.
pub fn receiver_user(pair: usize) -> String {
    format!("lt-r-{pair:06}")
}

/// The room every fan-out receiver of run `nonce` joins.
pub fn room_name(nonce: u32) -> String {
    format!("lt-{nonce:08x}")
}

/// What a target's messages are around their payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A SecureEnvelope holding the payload (Switchboard).
    Envelope,
    /// The payload alone: the broker's message payload (Mosquitto,
    /// nats-server).
    Bare,
}

/// Where the patched fields sit in every message of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Length of every message (the envelope, or the bare payload), bytes.
    pub len: usize,
    /// Length of the payload (`--size`), bytes.
    pub payload_len: usize,
    /// Offset of the 16-byte envelope id ([`Body::Envelope`]; a bare
    /// payload has no id, and this is 0).
    pub id_off: usize,
    /// Offset of the [`Stamp`] (the payload's start).
    pub stamp_off: usize,
}

/// What the payload of every message starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The pair that sent it.
    pub pair: u32,
    /// Sequence number within the pair, from 0.
    pub seq: u64,
    /// (Intended) send time, nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Layout {
    /// Reads the stamp of a received message; `None` if the message has the
    /// wrong length or no stamp.
    pub fn read_stamp(&self, msg: &[u8]) -> Option<Stamp> {
        if msg.len() != self.len {
            return None;
        }
        let s: &[u8; STAMP_LEN] = msg.get(self.stamp_off..self.stamp_off + STAMP_LEN)?.try_into().ok()?;
        let (magic, rest) = s.split_first_chunk::<4>()?;
        if *magic != STAMP_MAGIC {
            return None;
        }
        let (pair, rest) = rest.split_first_chunk::<4>()?;
        let (seq, rest) = rest.split_first_chunk::<8>()?;
        let sent_ns = rest.first_chunk::<8>()?;
        Some(Stamp {
            pair: u32::from_le_bytes(*pair),
            seq: u64::from_le_bytes(*seq),
            sent_ns: u64::from_le_bytes(*sent_ns),
        })
    }

    /// The sequence number carried in an envelope id of this run.
    pub fn seq_of_id(id: &[u8; 16]) -> u64 {
        let (_, seq) = id.split_last_chunk::<8>().expect("16 > 8");
        u64::from_be_bytes(*seq)
    }
}

/// One sender's message, patched in place for every message.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Vec<u8>,
    layout: Layout,
    pair: u32,
    /// Offset of the envelope id ([`Body::Envelope`] only).
    id_off: Option<usize>,
    /// `mesh`: offset of the destination name's six digits (envelopes).
    dest_digits: Option<usize>,
}

/// The destination a mesh template is built with, then patched.
const MESH_PLACEHOLDER: &str = "lt-r-zzzzzz";

/// Writes `n % 1_000_000` as six ASCII digits (user names, topics).
pub fn put_digits6(out: &mut [u8], mut n: usize) {
    for b in out.iter_mut().take(6).rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl Template {
    /// Builds pair `pair`'s message with a payload of exactly `size` bytes,
    /// as `body`. `nonce` (non-zero) makes the ids of this run distinct from
    /// other runs'; `created_at_ms` is the envelope's creation time (ttl 0:
    /// the server's maximum).
    pub fn new(pair: usize, body: Body, size: usize, nonce: u32, created_at_ms: u64) -> anyhow::Result<Self> {
        let (sender, receiver) = (sender_user(pair), receiver_user(pair));
        Self::to(pair, body, &sender, DestinationKind::User, &receiver, size, nonce, created_at_ms)
    }

    /// `mesh`: user `user` (named [`receiver_user`], one connection that
    /// both sends and receives) to another user, chosen per message with
    /// [`Template::retarget`]; stamps carry `user` as the pair.
    pub fn mesh(user: usize, body: Body, size: usize, nonce: u32, created_at_ms: u64) -> anyhow::Result<Self> {
        let me = receiver_user(user);
        let mut t = Self::to(user, body, &me, DestinationKind::User, MESH_PLACEHOLDER, size, nonce, created_at_ms)?;
        if body == Body::Envelope {
            let Some(off) = t.bytes.windows(MESH_PLACEHOLDER.len()).position(|w| w == MESH_PLACEHOLDER.as_bytes())
            else {
                bail!("destination not found in the built envelope");
            };
            t.dest_digits = Some(off + MESH_PLACEHOLDER.len() - 6);
            t.retarget(user);
        }
        Ok(t)
    }

    /// `mesh`: addresses the envelope to user `user` ([`receiver_user`]),
    /// patching the name's six digits in place. No-op for other templates
    /// (a bare payload is addressed by the protocol's topic or subject).
    pub fn retarget(&mut self, user: usize) {
        if let Some(off) = self.dest_digits {
            put_digits6(&mut self.bytes[off..off + 6], user);
        }
    }

    /// Like [`Template::new`], addressed to room `room` (fan-out).
    pub fn to_room(
        pair: usize,
        body: Body,
        room: &str,
        size: usize,
        nonce: u32,
        created_at_ms: u64,
    ) -> anyhow::Result<Self> {
        Self::to(pair, body, &sender_user(pair), DestinationKind::Room, room, size, nonce, created_at_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn to(
        pair: usize,
        body: Body,
        sender: &str,
        kind: DestinationKind,
        receiver: &str,
        size: usize,
        nonce: u32,
        created_at_ms: u64,
    ) -> anyhow::Result<Self> {
        ensure!(pair <= MAX_PAIRS, "at most {} pairs", MAX_PAIRS + 1);
        ensure!(nonce != 0, "the nonce must not be 0 (ids must not be nil)");
        ensure!(size >= STAMP_LEN, "--size must be at least {STAMP_LEN} bytes (the stamp)");
        let pair32 = u32::try_from(pair).context("pair index")?;
        let payload = vec![0xa5u8; size];
        let (bytes, layout, id_off) = match body {
            Body::Bare => (payload, Layout { len: size, payload_len: size, id_off: 0, stamp_off: 0 }, None),
            Body::Envelope => {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&nonce.to_be_bytes());
                id[4..8].copy_from_slice(&pair32.to_be_bytes());
                // A sentinel sequence number, to find the id in the built buffer.
                id[8..].copy_from_slice(&0x5a5a_5a5a_5a5a_5a5a_u64.to_be_bytes());
                let sender = UserId::parse(sender).context("sender user id")?;
                let destination = Destination::new(kind, receiver).context("destination name")?;
                let builder = EnvelopeBuilder::new(EnvelopeId(id), sender, destination, created_at_ms);
                let fits = |len: usize| builder.clone().payload(&payload[..len]).build();
                fits(STAMP_LEN).context("building the envelope")?;
                let bytes = match fits(size) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // Say how large a payload fits (the verifier's limit
                        // is on the envelope's apparent size, not its length).
                        let (mut lo, mut hi) = (STAMP_LEN, size);
                        while hi - lo > 1 {
                            let mid = lo + (hi - lo) / 2;
                            if fits(mid).is_ok() { lo = mid } else { hi = mid }
                        }
                        bail!(
                            "--size {size}: Switchboard would refuse the envelope ({e}); \
                             the largest payload it takes is {lo} bytes"
                        );
                    }
                };
                let limits = Limits::default();
                let env = Envelope::parse(&bytes, &limits).context("the built envelope does not verify")?;
                ensure!(env.payload().len() == size, "the built envelope's payload is not {size} bytes");
                let stamp_off = (env.payload().as_ptr() as usize) - (bytes.as_ptr() as usize);
                let Some(id_off) = bytes.windows(16).position(|w| w == id) else {
                    bail!("envelope id not found in the built envelope");
                };
                let layout = Layout { len: bytes.len(), payload_len: size, id_off, stamp_off };
                (bytes, layout, Some(id_off))
            }
        };
        let mut t = Self { bytes, layout, pair: pair32, id_off, dest_digits: None };
        t.stamp(0, 0);
        Ok(t)
    }

    /// Where the fields are.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Writes sequence number `seq` and send time `sent_ns` into the id (if
    /// the message has one) and the stamp; returns the message.
    pub fn stamp(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        if let Some(id_off) = self.id_off {
            self.bytes[id_off + 8..id_off + 16].copy_from_slice(&seq.to_be_bytes());
        }
        let stamp_off = self.layout.stamp_off;
        let s = &mut self.bytes[stamp_off..stamp_off + STAMP_LEN];
        s[..4].copy_from_slice(&STAMP_MAGIC);
        s[4..8].copy_from_slice(&self.pair.to_le_bytes());
        s[8..16].copy_from_slice(&seq.to_le_bytes());
        s[16..24].copy_from_slice(&sent_ns.to_le_bytes());
        &self.bytes
    }

    /// The message as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_a_payload_of_exactly_the_requested_size_and_verify_after_stamping() {
        let header = Template::new(0, Body::Envelope, STAMP_LEN, 1, 0).unwrap().layout().len - STAMP_LEN;
        for size in [STAMP_LEN, 256, 257, 300, 1024, 4096] {
            let mut t = Template::new(7, Body::Envelope, size, 0xdead_beef, 1_700_000_000_000).unwrap();
            let layout = t.layout();
            assert_eq!(layout.payload_len, size);
            // The header is the same give or take FlatBuffer alignment.
            assert!((header..header + 8).contains(&(layout.len - size)), "{size}: {layout:?}");
            let msg = t.stamp(42, 123_456_789).to_vec();
            assert_eq!(msg.len(), layout.len);
            let env = Envelope::parse(&msg, &Limits::default()).unwrap();
            assert_eq!(env.payload().len(), size);
            assert_eq!(env.sender().as_str(), "lt-s-000007");
            assert_eq!(env.destination().name(), "lt-r-000007");
            assert_eq!(Layout::seq_of_id(env.id().as_bytes()), 42);
            assert_eq!(&env.id().as_bytes()[..4], &0xdead_beef_u32.to_be_bytes());
            assert_eq!(layout.read_stamp(&msg), Some(Stamp { pair: 7, seq: 42, sent_ns: 123_456_789 }));
        }
    }

    #[test]
    fn bare_payloads_are_exactly_the_requested_size_and_start_with_the_stamp() {
        for size in [STAMP_LEN, 256, 4096, 65_536] {
            let mut t = Template::new(7, Body::Bare, size, 0xdead_beef, 0).unwrap();
            let layout = t.layout();
            assert_eq!(layout, Layout { len: size, payload_len: size, id_off: 0, stamp_off: 0 });
            let msg = t.stamp(42, 123_456_789).to_vec();
            assert_eq!(msg.len(), size);
            assert_eq!(&msg[..4], b"LTv1");
            assert!(msg[STAMP_LEN..].iter().all(|&b| b == 0xa5), "only the stamp is patched");
            assert_eq!(layout.read_stamp(&msg), Some(Stamp { pair: 7, seq: 42, sent_ns: 123_456_789 }));
        }
        let mut room = Template::to_room(0, Body::Bare, &room_name(0xab), 100, 1, 0).unwrap();
        assert_eq!(room.stamp(3, 4).len(), 100);
        let mut mesh = Template::mesh(3, Body::Bare, 100, 1, 0).unwrap();
        mesh.retarget(9);
        assert_eq!(mesh.layout().read_stamp(mesh.stamp(5, 6)), Some(Stamp { pair: 3, seq: 5, sent_ns: 6 }));
    }

    #[test]
    fn room_envelopes_are_addressed_to_the_room() {
        let mut t = Template::to_room(0, Body::Envelope, &room_name(0xab), 256, 1, 0).unwrap();
        assert_eq!(t.layout().payload_len, 256);
        let msg = t.stamp(3, 4).to_vec();
        let env = Envelope::parse(&msg, &Limits::default()).unwrap();
        assert_eq!((env.destination().kind(), env.destination().name()), (DestinationKind::Room, "lt-000000ab"));
        assert_eq!(env.payload().len(), 256);
        assert_eq!(t.layout().read_stamp(&msg).map(|s| s.seq), Some(3));
    }

    #[test]
    fn mesh_envelopes_are_retargeted_in_place() {
        let mut t = Template::mesh(3, Body::Envelope, 256, 1, 0).unwrap();
        assert_eq!(t.layout(), Template::new(0, Body::Envelope, 256, 1, 0).unwrap().layout());
        for dest in [0, 7, 999_999] {
            t.retarget(dest);
            let msg = t.stamp(5, 6).to_vec();
            let env = Envelope::parse(&msg, &Limits::default()).unwrap();
            assert_eq!(env.sender().as_str(), "lt-r-000003");
            assert_eq!(env.destination().name(), receiver_user(dest));
            assert_eq!(t.layout().read_stamp(&msg), Some(Stamp { pair: 3, seq: 5, sent_ns: 6 }));
        }
    }

    #[test]
    fn every_pair_has_the_same_layout() {
        let a = Template::new(0, Body::Envelope, 256, 1, 0).unwrap().layout();
        let b = Template::new(MAX_PAIRS, Body::Envelope, 256, 1, 0).unwrap().layout();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_sizes_and_messages_are_refused() {
        for body in [Body::Envelope, Body::Bare] {
            assert!(Template::new(0, body, STAMP_LEN - 1, 1, 0).is_err());
            assert!(Template::new(0, body, 256, 0, 0).is_err());
            assert!(Template::new(MAX_PAIRS + 1, body, 256, 1, 0).is_err());
        }
        // The envelope's header does not fit in Switchboard's limit with it.
        let err = Template::new(0, Body::Envelope, 65_536, 1, 0).unwrap_err().to_string();
        let max: usize = err.rsplit(' ').nth(1).unwrap().parse().unwrap();
        assert!(Template::new(0, Body::Envelope, max, 1, 0).is_ok(), "{err}");
        assert!(Template::new(0, Body::Envelope, max + 1, 1, 0).is_err(), "{err}");
        let mut t = Template::new(0, Body::Envelope, 256, 1, 0).unwrap();
        let layout = t.layout();
        let msg = t.stamp(1, 2).to_vec();
        assert_eq!(layout.read_stamp(&msg[..msg.len() - 1]), None);
        let mut bad = msg.clone();
        bad[layout.stamp_off] ^= 1;
        assert_eq!(layout.read_stamp(&bad), None);
    }
}
