//! Per-pair accounting of a run: which sequence numbers were sent inside the
//! measured window, which arrived, which arrived twice or out of order, and
//! which are lost.
//!
//! Pure: no clock, no I/O, no histogram. Callers pass times as nanoseconds
//! since the run's epoch and record the latencies this module returns.
//! A pair's sender and receiver live on the same generator thread, so one
//! [`PairLedger`] sees both ends without sharing.
//!
//! Fan-out (one sender, K receivers spread over threads): the sender keeps a
//! [`PairLedger`] for its sends and answers, each receiver a
//! [`ReceiverLedger`] that decides from the stamp's send time whether a
//! message belongs to the window, and [`FanoutCounts::new`] puts them
//! together after the run, receiver by receiver.

use serde::Serialize;

/// The measured window, `[start_ns, end_ns)` since the run's epoch. A
/// message belongs to it when its send time (the intended time in `rate`
/// mode) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First nanosecond inside the window.
    pub start_ns: u64,
    /// First nanosecond after the window.
    pub end_ns: u64,
}

impl Window {
    /// True if `t_ns` lies in the window.
    pub fn contains(&self, t_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&t_ns)
    }

    /// Length in seconds.
    pub fn secs(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// What a received message turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival of a message sent in the window; record its latency.
    Measured {
        /// Receive time minus (intended) send time.
        latency_ns: u64,
    },
    /// First arrival of a message sent outside the window (warm-up).
    Unmeasured,
    /// The sequence number arrived before.
    Duplicate,
    /// A sequence number this pair never sent (corrupt or misrouted).
    Unknown,
}

/// How the server answered one sent message (targets that answer sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Taken (delivered, stored, or a duplicate).
    Accepted,
    /// Accepted but dropped: the recipient had no live connection.
    Offline,
    /// Refused with an error; it will never be delivered.
    Rejected,
}

/// The sender and receiver state of one pair.
#[derive(Debug, Default)]
pub struct PairLedger {
    next_seq: u64,
    /// Sequence numbers `[lo, hi)` were sent inside the window; send times
    /// are monotonic per pair, so they are contiguous.
    measured: Option<(u64, u64)>,
    answered: u64,
    received: u64,
    /// One past the highest sequence number received.
    high: u64,
    seen: SeqSet,
    counts: PairCounts,
}

/// Counts of one pair, or summed over pairs. Everything but `sent_total`,
/// `received_total` and `answered` concerns messages sent in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PairCounts {
    /// Messages sent in the window.
    pub sent: u64,
    /// Of those, received at least once.
    pub delivered: u64,
    /// Of those, refused by the server (never delivered, not lost).
    pub rejected: u64,
    /// Of those, answered "recipient offline" (dropped by the server; lost).
    pub offline: u64,
    /// Extra arrivals of a message already received.
    pub duplicates: u64,
    /// First arrivals after a higher sequence number of the same pair.
    pub out_of_order: u64,
    /// Sent in the window, neither received nor refused (filled in by
    /// [`PairLedger::counts`]).
    pub lost: u64,
    /// Arrivals that carry no valid stamp of this pair (any time).
    pub unknown: u64,
    /// Messages sent, warm-up included.
    pub sent_total: u64,
    /// Distinct messages received, warm-up included.
    pub received_total: u64,
    /// Answers to sends received (targets that answer sends).
    pub answered: u64,
}

impl PairCounts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &PairCounts) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.offline += other.offline;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.lost += other.lost;
        self.unknown += other.unknown;
        self.sent_total += other.sent_total;
        self.received_total += other.received_total;
        self.answered += other.answered;
    }
}

impl PairLedger {
    /// A pair that has sent nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next sequence number for a message sent at `t_ns` (its
    /// intended time in `rate` mode). Send times must not decrease.
    pub fn on_send(&mut self, t_ns: u64, window: &Window) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if window.contains(t_ns) {
            let lo = self.measured.map_or(seq, |(lo, _)| lo);
            debug_assert!(self.measured.is_none_or(|(_, hi)| hi == seq), "send times went backwards");
            self.measured = Some((lo, seq + 1));
            self.counts.sent += 1;
        }
        seq
    }

    /// Records the server's answer to the message `seq` (if the answer names
    /// it).
    pub fn on_answer(&mut self, seq: Option<u64>, answer: Answer) {
        self.answered += 1;
        let measured = seq.is_some_and(|s| self.is_measured(s));
        if measured {
            match answer {
                Answer::Accepted => {}
                Answer::Offline => self.counts.offline += 1,
                Answer::Rejected => self.counts.rejected += 1,
            }
        }
    }

    /// Records an arrival of message `seq`, sent (or due) at `sent_ns` and
    /// received at `now_ns`.
    pub fn on_receive(&mut self, seq: u64, sent_ns: u64, now_ns: u64) -> Arrival {
        if seq >= self.next_seq {
            self.counts.unknown += 1;
            return Arrival::Unknown;
        }
        let measured = self.is_measured(seq);
        if !self.seen.insert(seq) {
            if measured {
                self.counts.duplicates += 1;
            }
            return Arrival::Duplicate;
        }
        self.received += 1;
        let late = seq < self.high;
        self.high = self.high.max(seq + 1);
        if !measured {
            return Arrival::Unmeasured;
        }
        self.counts.delivered += 1;
        if late {
            self.counts.out_of_order += 1;
        }
        Arrival::Measured { latency_ns: now_ns.saturating_sub(sent_ns) }
    }

    /// Records an arrival that carries no valid stamp of this pair.
    pub fn on_unknown(&mut self) {
        self.counts.unknown += 1;
    }

    /// Messages sent and not yet answered.
    pub fn unanswered(&self) -> u64 {
        self.next_seq.saturating_sub(self.answered)
    }

    /// Messages sent and not yet received.
    pub fn undelivered(&self) -> u64 {
        self.next_seq.saturating_sub(self.received)
    }

    /// Messages sent in the window that are neither received nor refused.
    pub fn lost(&self) -> u64 {
        self.counts.sent.saturating_sub(self.counts.delivered + self.counts.rejected)
    }

    /// The pair's counts so far, with `lost` filled in.
    pub fn counts(&self) -> PairCounts {
        PairCounts {
            lost: self.lost(),
            sent_total: self.next_seq,
            received_total: self.received,
            answered: self.answered,
            ..self.counts
        }
    }

    fn is_measured(&self, seq: u64) -> bool {
        self.measured.is_some_and(|(lo, hi)| (lo..hi).contains(&seq))
    }
}

/// One fan-out receiver: which of the sender's messages arrived. A
/// message is measured when its stamped (intended) send time lies in the
/// window, the rule [`PairLedger::on_send`] applies on the sender's side.
#[derive(Debug, Default)]
pub struct ReceiverLedger {
    seen: SeqSet,
    /// One past the highest sequence number received.
    high: u64,
    counts: ReceiverCounts,
}

/// Counts of one fan-out receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReceiverCounts {
    /// Messages of the window received at least once.
    pub delivered: u64,
    /// Extra arrivals of a message of the window already received.
    pub duplicates: u64,
    /// First arrivals of the window after a higher sequence number.
    pub out_of_order: u64,
    /// Arrivals without a valid stamp, or with a sequence number not sent.
    pub unknown: u64,
    /// Distinct messages received, warm-up included.
    pub received_total: u64,
}

impl ReceiverLedger {
    /// A receiver that has received nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an arrival of message `seq` stamped `sent_ns`, received at
    /// `now_ns`; `sent_upper` is how many messages the sender had taken a
    /// sequence number for (a larger `seq` is unknown, and never grows the
    /// set).
    pub fn on_receive(&mut self, seq: u64, sent_ns: u64, now_ns: u64, window: &Window, sent_upper: u64) -> Arrival {
        if seq >= sent_upper {
            self.counts.unknown += 1;
            return Arrival::Unknown;
        }
        let measured = window.contains(sent_ns);
        if !self.seen.insert(seq) {
            if measured {
                self.counts.duplicates += 1;
            }
            return Arrival::Duplicate;
        }
        self.counts.received_total += 1;
        let late = seq < self.high;
        self.high = self.high.max(seq + 1);
        if !measured {
            return Arrival::Unmeasured;
        }
        self.counts.delivered += 1;
        if late {
            self.counts.out_of_order += 1;
        }
        Arrival::Measured { latency_ns: now_ns.saturating_sub(sent_ns) }
    }

    /// Records an arrival that carries no valid stamp of the sender.
    pub fn on_unknown(&mut self) {
        self.counts.unknown += 1;
    }

    /// The counts so far.
    pub fn counts(&self) -> ReceiverCounts {
        self.counts
    }
}

/// The counts of a fan-out run: every message of the window is expected
/// once at every receiver, unless the server refused it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FanoutCounts {
    /// Receivers.
    pub receivers: u64,
    /// Messages sent in the window.
    pub sent: u64,
    /// Of those, refused by the server (expected nowhere).
    pub rejected: u64,
    /// Deliveries expected: (sent − rejected) × receivers.
    pub expected: u64,
    /// Deliveries of messages of the window (first arrivals).
    pub delivered: u64,
    /// Expected deliveries that did not happen, summed over receivers.
    pub lost: u64,
    /// Receivers that missed at least one message.
    pub receivers_with_loss: u64,
    /// The most messages one receiver missed.
    pub max_lost_per_receiver: u64,
    /// Extra arrivals, summed over receivers.
    pub duplicates: u64,
    /// First arrivals after a higher sequence number, summed over receivers.
    pub out_of_order: u64,
    /// Arrivals without a valid stamp, summed over receivers.
    pub unknown: u64,
    /// Messages sent, warm-up included.
    pub sent_total: u64,
    /// Distinct messages received, warm-up included, summed over receivers.
    pub received_total: u64,
    /// Answers to sends received (targets that answer sends).
    pub answered: u64,
}

impl FanoutCounts {
    /// Puts the sender's counts and every receiver's together.
    pub fn new(sender: &PairCounts, receivers: impl IntoIterator<Item = ReceiverCounts>) -> Self {
        let per_receiver = sender.sent.saturating_sub(sender.rejected);
        let mut c = FanoutCounts {
            sent: sender.sent,
            rejected: sender.rejected,
            sent_total: sender.sent_total,
            answered: sender.answered,
            ..Self::default()
        };
        for r in receivers {
            c.receivers += 1;
            let lost = per_receiver.saturating_sub(r.delivered);
            c.lost += lost;
            c.receivers_with_loss += u64::from(lost > 0);
            c.max_lost_per_receiver = c.max_lost_per_receiver.max(lost);
            c.delivered += r.delivered;
            c.duplicates += r.duplicates;
            c.out_of_order += r.out_of_order;
            c.unknown += r.unknown;
            c.received_total += r.received_total;
        }
        c.expected = per_receiver * c.receivers;
        c
    }
}

/// The receiving side of `mesh` for one generator thread's users: every
/// user sends to random others with its own sequence numbers, so each
/// arrival is recorded as (sender, seq). A message goes to exactly one
/// receiver, so duplicates are found per sender over the thread's
/// receivers; order is only promised per sender→receiver stream, so each
/// receiver keeps a small map of the highest sequence number per sender.
/// Like fan-out, a message is measured when its stamped send time lies in
/// the window; the loss is the senders' window minus what arrived,
/// computed after the run over all threads.
#[derive(Debug, Default)]
pub struct MeshLedger {
    /// Per sender (all users of the run): sequence numbers received here.
    seen: Vec<SeqSet>,
    /// Per local receiver: sender → one past the highest seq received.
    high: Vec<std::collections::HashMap<u32, u64>>,
    counts: ReceiverCounts,
}

impl MeshLedger {
    /// A ledger for `receivers` local receivers of a run of `users` users.
    pub fn new(users: usize, receivers: usize) -> Self {
        Self {
            seen: (0..users).map(|_| SeqSet::default()).collect(),
            high: vec![Default::default(); receivers],
            counts: ReceiverCounts::default(),
        }
    }

    /// Records an arrival at local receiver `receiver` of `sender`'s message
    /// `seq` stamped `sent_ns`, received at `now_ns`; `sent_upper` is how
    /// many sequence numbers the sender had taken (a larger `seq`, or an
    /// unknown sender, is unknown and never grows the sets).
    #[allow(clippy::too_many_arguments)]
    pub fn on_receive(
        &mut self,
        receiver: usize,
        sender: u32,
        seq: u64,
        sent_ns: u64,
        now_ns: u64,
        window: &Window,
        sent_upper: u64,
    ) -> Arrival {
        let Some(seen) = self.seen.get_mut(sender as usize) else {
            self.counts.unknown += 1;
            return Arrival::Unknown;
        };
        if seq >= sent_upper {
            self.counts.unknown += 1;
            return Arrival::Unknown;
        }
        let measured = window.contains(sent_ns);
        if !seen.insert(seq) {
            if measured {
                self.counts.duplicates += 1;
            }
            return Arrival::Duplicate;
        }
        self.counts.received_total += 1;
        let high = self.high[receiver].entry(sender).or_insert(0);
        let late = seq < *high;
        *high = (*high).max(seq + 1);
        if !measured {
            return Arrival::Unmeasured;
        }
        self.counts.delivered += 1;
        if late {
            self.counts.out_of_order += 1;
        }
        Arrival::Measured { latency_ns: now_ns.saturating_sub(sent_ns) }
    }

    /// Records an arrival without a valid stamp.
    pub fn on_unknown(&mut self) {
        self.counts.unknown += 1;
    }

    /// The counts so far.
    pub fn counts(&self) -> ReceiverCounts {
        self.counts
    }
}

/// A growable bit set of sequence numbers. Grows by doubling, so the hot
/// path allocates only O(log n) times over a run.
#[derive(Debug, Default)]
struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Inserts `seq`; false if it was present.
    fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            let want = (word + 1).max(self.words.len() * 2).max(16);
            self.words.resize(want, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window { start_ns: 1_000, end_ns: 2_000 };

    #[test]
    fn window_is_half_open() {
        assert!(!W.contains(999));
        assert!(W.contains(1_000));
        assert!(W.contains(1_999));
        assert!(!W.contains(2_000));
        assert_eq!(W.secs(), 1e-6);
    }

    #[test]
    fn only_messages_sent_in_the_window_count() {
        let mut l = PairLedger::new();
        // Two warm-up, three measured, one after the window.
        let seqs: Vec<u64> = [500, 999, 1_000, 1_500, 1_999, 2_000].iter().map(|&t| l.on_send(t, &W)).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
        assert_eq!(l.on_receive(0, 500, 600), Arrival::Unmeasured);
        assert_eq!(l.on_receive(2, 1_000, 1_250), Arrival::Measured { latency_ns: 250 });
        assert_eq!(l.on_receive(5, 2_000, 2_100), Arrival::Unmeasured);
        let c = l.counts();
        assert_eq!((c.sent, c.delivered, c.lost), (3, 1, 2));
        assert_eq!((c.sent_total, c.received_total), (6, 3));
        // Late arrivals at the end of the drain still count.
        assert_eq!(l.on_receive(3, 1_500, 9_000), Arrival::Measured { latency_ns: 7_500 });
        assert_eq!(l.on_receive(4, 1_999, 9_000), Arrival::Measured { latency_ns: 7_001 });
        assert_eq!(l.lost(), 0);
    }

    #[test]
    fn loss_is_exact_and_unreceived_warm_up_is_not_lost() {
        let mut l = PairLedger::new();
        for t in [100, 200, 1_100, 1_200, 1_300] {
            l.on_send(t, &W);
        }
        // Warm-up messages 0 and 1 never arrive: not lost.
        l.on_receive(3, 1_200, 1_400);
        let c = l.counts();
        assert_eq!((c.sent, c.delivered, c.lost), (3, 1, 2));
    }

    #[test]
    fn duplicates_are_counted_once_and_not_delivered_twice() {
        let mut l = PairLedger::new();
        for t in [1_100, 1_200] {
            l.on_send(t, &W);
        }
        assert!(matches!(l.on_receive(0, 1_100, 1_150), Arrival::Measured { .. }));
        assert_eq!(l.on_receive(0, 1_100, 1_160), Arrival::Duplicate);
        assert_eq!(l.on_receive(0, 1_100, 1_170), Arrival::Duplicate);
        let c = l.counts();
        assert_eq!((c.delivered, c.duplicates, c.lost), (1, 2, 1));
        // A duplicate of a warm-up message is not counted.
        let mut l = PairLedger::new();
        l.on_send(10, &W);
        l.on_receive(0, 10, 20);
        assert_eq!(l.on_receive(0, 10, 30), Arrival::Duplicate);
        assert_eq!(l.counts().duplicates, 0);
    }

    #[test]
    fn out_of_order_arrivals_are_counted() {
        let mut l = PairLedger::new();
        for t in [1_100, 1_200, 1_300, 1_400] {
            l.on_send(t, &W);
        }
        for seq in [0, 2, 1, 3] {
            l.on_receive(seq, 1_000 + 100 * (seq + 1), 1_900);
        }
        let c = l.counts();
        assert_eq!((c.delivered, c.out_of_order, c.lost, c.duplicates), (4, 1, 0, 0));
        // A gap alone is not reordering.
        let mut l = PairLedger::new();
        for t in [1_100, 1_200, 1_300] {
            l.on_send(t, &W);
        }
        l.on_receive(0, 1_100, 1_900);
        l.on_receive(2, 1_300, 1_900);
        assert_eq!((l.counts().out_of_order, l.lost()), (0, 1));
    }

    #[test]
    fn unknown_sequence_numbers_are_not_delivered() {
        let mut l = PairLedger::new();
        l.on_send(1_100, &W);
        assert_eq!(l.on_receive(7, 1_100, 1_200), Arrival::Unknown);
        l.on_unknown();
        let c = l.counts();
        assert_eq!((c.unknown, c.delivered, c.lost), (2, 0, 1));
    }

    #[test]
    fn rejected_messages_are_not_lost_but_offline_ones_are() {
        let mut l = PairLedger::new();
        for t in [500, 1_100, 1_200, 1_300] {
            l.on_send(t, &W);
        }
        l.on_answer(Some(0), Answer::Rejected); // warm-up: not counted
        l.on_answer(Some(1), Answer::Rejected);
        l.on_answer(Some(2), Answer::Offline);
        l.on_answer(Some(3), Answer::Accepted);
        l.on_receive(3, 1_300, 1_400);
        let c = l.counts();
        assert_eq!((c.sent, c.delivered, c.rejected, c.offline, c.lost), (3, 1, 1, 1, 1));
        assert_eq!((l.unanswered(), l.undelivered()), (0, 3));
    }

    #[test]
    fn in_flight_counts_follow_answers_and_receipts() {
        let mut l = PairLedger::new();
        for _ in 0..5 {
            l.on_send(1_500, &W);
        }
        assert_eq!((l.unanswered(), l.undelivered()), (5, 5));
        l.on_answer(Some(0), Answer::Accepted);
        l.on_receive(0, 1_500, 1_600);
        l.on_receive(0, 1_500, 1_600); // a duplicate frees nothing
        assert_eq!((l.unanswered(), l.undelivered()), (4, 4));
    }

    #[test]
    fn the_sequence_set_grows_without_forgetting() {
        let mut s = SeqSet::default();
        for seq in (0..100_000).step_by(7) {
            assert!(s.insert(seq));
        }
        for seq in (0..100_000).step_by(7) {
            assert!(!s.insert(seq));
        }
        assert!(s.insert(1));
    }

    #[test]
    fn fanout_receivers_measure_by_stamped_send_time() {
        let mut r = ReceiverLedger::new();
        assert_eq!(r.on_receive(0, 500, 900, &W, 4), Arrival::Unmeasured);
        assert_eq!(r.on_receive(2, 1_200, 1_500, &W, 4), Arrival::Measured { latency_ns: 300 });
        assert_eq!(r.on_receive(1, 1_100, 1_600, &W, 4), Arrival::Measured { latency_ns: 500 });
        assert_eq!(r.on_receive(1, 1_100, 1_700, &W, 4), Arrival::Duplicate);
        assert_eq!(r.on_receive(3, 2_000, 2_100, &W, 4), Arrival::Unmeasured);
        // Beyond what the sender sent: unknown, and the set does not grow.
        assert_eq!(r.on_receive(1 << 40, 1_100, 1_800, &W, 4), Arrival::Unknown);
        r.on_unknown();
        let c = r.counts();
        assert_eq!(c, ReceiverCounts { delivered: 2, duplicates: 1, out_of_order: 1, unknown: 2, received_total: 4 });
    }

    #[test]
    fn fanout_loss_is_exact_per_receiver() {
        let mut sender = PairLedger::new();
        for t in [500, 1_100, 1_200, 1_300, 1_400] {
            sender.on_send(t, &W);
        }
        sender.on_answer(Some(4), Answer::Rejected);
        let sender = sender.counts();
        assert_eq!((sender.sent, sender.rejected), (4, 1));
        // Three receivers: one got everything deliverable, one missed one,
        // one missed two and saw a duplicate.
        let full = ReceiverCounts { delivered: 3, received_total: 4, ..Default::default() };
        let one = ReceiverCounts { delivered: 2, received_total: 3, ..Default::default() };
        let two = ReceiverCounts { delivered: 1, duplicates: 1, received_total: 2, ..Default::default() };
        let c = FanoutCounts::new(&sender, [full, one, two]);
        assert_eq!((c.receivers, c.expected, c.delivered, c.lost), (3, 9, 6, 3));
        assert_eq!((c.receivers_with_loss, c.max_lost_per_receiver, c.duplicates), (2, 2, 1));
        assert_eq!((c.sent_total, c.received_total), (5, 9));
        // No receivers: nothing expected, nothing lost.
        let none = FanoutCounts::new(&sender, []);
        assert_eq!((none.expected, none.lost), (0, 0));
    }

    #[test]
    fn mesh_arrivals_are_checked_per_sender_and_stream() {
        let mut m = MeshLedger::new(3, 2);
        // Sender 0 sends seq 0..4: 0 and 2 to receiver 0, 1 and 3 to
        // receiver 1 (interleaved streams are not reordering).
        assert_eq!(m.on_receive(0, 0, 0, 500, 900, &W, 4), Arrival::Unmeasured);
        assert_eq!(m.on_receive(1, 0, 1, 1_100, 1_200, &W, 4), Arrival::Measured { latency_ns: 100 });
        assert_eq!(m.on_receive(1, 0, 3, 1_300, 1_400, &W, 4), Arrival::Measured { latency_ns: 100 });
        assert_eq!(m.on_receive(0, 0, 2, 1_200, 1_500, &W, 4), Arrival::Measured { latency_ns: 300 });
        assert_eq!(m.counts().out_of_order, 0);
        // The same seq again, even at another receiver, is a duplicate.
        assert_eq!(m.on_receive(0, 0, 3, 1_300, 1_600, &W, 4), Arrival::Duplicate);
        // Sender 1 to receiver 0, 1 before 0: out of order on that stream.
        assert_eq!(m.on_receive(0, 1, 1, 1_100, 1_700, &W, 2), Arrival::Measured { latency_ns: 600 });
        assert_eq!(m.on_receive(0, 1, 0, 1_050, 1_700, &W, 2), Arrival::Measured { latency_ns: 650 });
        // Beyond what was sent, or an unknown sender.
        assert_eq!(m.on_receive(0, 1, 2, 1_100, 1_800, &W, 2), Arrival::Unknown);
        assert_eq!(m.on_receive(0, 9, 0, 1_100, 1_800, &W, 2), Arrival::Unknown);
        let c = m.counts();
        assert_eq!(c, ReceiverCounts { delivered: 5, duplicates: 1, out_of_order: 1, unknown: 2, received_total: 6 });
    }

    #[test]
    fn counts_add_up_over_pairs() {
        let mut a = PairLedger::new();
        let mut b = PairLedger::new();
        a.on_send(1_100, &W);
        b.on_send(1_100, &W);
        b.on_send(1_200, &W);
        a.on_receive(0, 1_100, 1_200);
        let mut total = a.counts();
        total.add(&b.counts());
        assert_eq!((total.sent, total.delivered, total.lost), (3, 1, 2));
    }
}
