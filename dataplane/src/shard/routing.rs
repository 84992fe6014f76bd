//! Routing: delivery of envelopes to users and rooms, the answers that go
//! back to senders (through their sessions), and the backlog of messages
//! that must reach another shard.

use std::collections::VecDeque;

use bytes::Bytes;
use switchboard_protocol::session::Reply;
use switchboard_protocol::{Destination, ErrorCode, Outcome};

use super::conn::HttpAnswer;
use super::ids::{ConnId, Dest, Member, ShardId};
use super::msg::{Msg, Origin, SendResult, UserAnswer};
use super::presence::group_by_shard;
use super::write::Out;
use super::{Protocol, RouteKind, Shard};

/// The answer to work refused because a shard's queue and backlog are full.
const OVERLOADED: &str = "cross-shard queue full, retry later";

/// Messages waiting for room in full mesh queues: one FIFO per destination
/// shard, so a send checks its destination's in O(1).
pub(crate) struct Backlog {
    queues: Vec<VecDeque<Msg>>,
    /// Messages in all queues.
    len: usize,
}

impl Backlog {
    pub(crate) fn new(shards: usize) -> Self {
        Self { queues: (0..shards).map(|_| VecDeque::new()).collect(), len: 0 }
    }

    /// Messages waiting for `dst`.
    fn waiting(&self, dst: ShardId) -> usize {
        self.queues[dst.index()].len()
    }

    fn push(&mut self, dst: ShardId, msg: Msg) {
        self.queues[dst.index()].push_back(msg);
        self.len += 1;
    }
}

/// What became of one delivery to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Queued for the connection.
    Queued,
    /// The connection is over its outbound bound (slow).
    Refused,
    /// The connection is gone or closing.
    Gone,
}

/// What the connections of one shard did with an envelope.
#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    /// Connections that queued it.
    queued: u32,
    /// True if a connection refused it.
    refused: bool,
}

impl Taken {
    fn add(&mut self, d: Delivery) {
        match d {
            Delivery::Queued => self.queued += 1,
            Delivery::Refused => self.refused = true,
            Delivery::Gone => {}
        }
    }
}

/// A routed envelope's destination: its owner shard and its place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// A user and its owner shard.
    User(ShardId, Dest),
    /// A room and its owner shard.
    Room(ShardId, Dest),
}

impl Shard {
    /// Handles a routing, room, presence or answer message.
    pub(crate) fn handle_routing(&self, msg: Msg) {
        match msg {
            Msg::ToUser { envelope, user, from, exclude } => {
                let user = user.name(&envelope);
                self.deliver_to_user(user, &envelope, from, exclude);
            }
            Msg::ToRoom { envelope, room, from, exclude } => {
                let room = room.name(&envelope);
                // One message per shard with members, each carrying the
                // same refcounted envelope.
                let mut groups = Vec::new();
                let recipients = {
                    let rooms = self.rooms.borrow();
                    let members = rooms.members(room).iter().filter(|m| Some(**m) != exclude);
                    group_by_shard(members, &mut groups);
                    groups.iter().map(|(_, v)| v.len() as u32).sum()
                };
                if let Some((full, _)) = groups.iter().find(|(shard, _)| !self.room_for_work(*shard)) {
                    // All or nothing: a room send is not half delivered.
                    tracing::debug!(shard = self.id.0, to = full.0, "room send refused: backlog full");
                    self.answer_send(from, Err((ErrorCode::Overloaded, OVERLOADED)));
                    return;
                }
                for (shard, conns) in groups {
                    self.send_reliable(shard, Msg::Deliver { envelope: envelope.clone(), conns, answer: None });
                }
                self.metrics.routed(RouteKind::Room, Outcome::Delivered);
                self.answer_send(from, Ok((Outcome::Delivered, recipients)));
            }
            Msg::Deliver { envelope, conns, answer } => {
                let mut taken = Taken::default();
                for c in conns {
                    taken.add(self.deliver_one(c, &envelope));
                }
                self.metrics.delivered.add(u64::from(taken.queued));
                if let Some(answer) = answer {
                    self.answer_user_send(&envelope, taken, answer);
                }
            }
            Msg::Join { room, member, request_id } => {
                self.rooms.borrow_mut().join(&room, member);
                self.answer(member, Reply::Done { request_id });
            }
            Msg::Leave { room, member, request_id } => {
                self.rooms.borrow_mut().leave(&room, member);
                if let Some(request_id) = request_id {
                    self.answer(member, Reply::Done { request_id });
                }
            }
            Msg::PresenceQuery { user, from, request_id } => {
                let connections = self.presence.borrow().connections(&user).len() as u32;
                self.answer(from, Reply::Presence { request_id, connections, user });
            }
            Msg::Reply { conn, reply } => self.reply(conn, reply),
            Msg::Outcome { to, result } => self.outcome(to, result),
            Msg::Handoff(_) | Msg::Command(_) => self.handle(msg),
        }
    }

    /// Where a verified envelope goes: its destination's owner shard and
    /// the destination's place in `envelope` (`None` for a kind that is not
    /// routed; the session refuses those first).
    pub(crate) fn target(&self, envelope: &[u8], destination: Destination<'_>) -> Option<Target> {
        let owners = &self.shared.owners;
        match destination {
            Destination::User(u) => Some(Target::User(owners.user(u.as_str()), Dest::new(envelope, u.as_str()))),
            Destination::Room(r) => Some(Target::Room(owners.room(r.as_str()), Dest::new(envelope, r.as_str()))),
            _ => None,
        }
    }

    /// Routes a verified envelope, sent by `from`, to `target`. The
    /// destination travels as its place in the envelope, which moves on
    /// without a refcount increment.
    pub(crate) fn route(&self, from: Origin, target: Target, envelope: Bytes, echo: bool) {
        let exclude = if echo { None } else { Some(from.member) };
        let (owner, msg) = match target {
            Target::User(owner, user) => (owner, Msg::ToUser { envelope, user, from, exclude }),
            Target::Room(owner, room) => (owner, Msg::ToRoom { envelope, room, from, exclude }),
        };
        if !self.send_or_handle(owner, msg) {
            self.answer_send(from, Err((ErrorCode::Overloaded, OVERLOADED)));
        }
    }

    /// Queues an envelope for a connection of this shard, unless it is
    /// gone, closing or over its queue bound (it then counts as slow).
    fn deliver_one(&self, id: ConnId, envelope: &Bytes) -> Delivery {
        let config = &self.shared.session;
        let now = self.now();
        self.with_conn(id, |c| {
            if c.is_closing() {
                return Delivery::Gone;
            }
            if !c.session.admit_delivery(config, envelope.len(), c.tx.out.len(), c.tx.out.bytes(), now) {
                self.metrics.queue_overflow.inc();
                return Delivery::Refused;
            }
            c.tx.out.push(Out::Deliver { envelope: envelope.clone(), redelivery: false });
            c.wake_writer();
            Delivery::Queued
        })
        .unwrap_or(Delivery::Gone)
    }

    /// Delivers to every live connection of a user owned by this shard:
    /// those on this shard at once, the others through their shards, and
    /// answers the sender with what happened. If no connection here took
    /// the envelope, the answer travels with the deliveries to the other
    /// shards (one message per shard either way, see [`UserAnswer`]).
    fn deliver_to_user(&self, user: &str, envelope: &Bytes, from: Origin, exclude: Option<Member>) {
        let mut taken = Taken::default();
        let mut remote = Vec::new();
        {
            // `deliver_one` borrows the connection table, not the presence
            // table, so the list is walked in place (no copy per envelope).
            let presence = self.presence.borrow();
            for &m in presence.connections(user) {
                if Some(m) == exclude {
                    continue;
                }
                if m.shard != self.id {
                    remote.push(m);
                } else {
                    taken.add(self.deliver_one(m.conn, envelope));
                }
            }
        }
        self.metrics.delivered.add(u64::from(taken.queued));
        let mut rest = Vec::new();
        group_by_shard(&remote, &mut rest);
        self.answer_user_send(envelope, taken, UserAnswer { from, refused: false, rest });
    }

    /// Answers a send to a user once this shard tried its connections
    /// (`taken`): delivered if one took it (the envelope then goes on to
    /// the rest without an answer), else the answer goes on with it to the
    /// next shard, or, at the end of the way, busy or offline.
    fn answer_user_send(&self, envelope: &Bytes, taken: Taken, answer: UserAnswer) {
        let UserAnswer { from, refused, rest } = answer;
        let refused = refused || taken.refused;
        if taken.queued > 0 {
            let handed: u32 = rest.iter().map(|(_, c)| c.len() as u32).sum();
            self.metrics.routed(RouteKind::User, Outcome::Delivered);
            self.answer_send(from, Ok((Outcome::Delivered, taken.queued + handed)));
            for (shard, conns) in rest {
                if self.room_for_work(shard) {
                    self.send_reliable(shard, Msg::Deliver { envelope: envelope.clone(), conns, answer: None });
                } else {
                    self.metrics.cross_shard_full.inc();
                }
            }
            return;
        }
        let mut rest = rest.into_iter();
        if let Some((shard, conns)) = rest.next() {
            if !self.room_for_work(shard) {
                self.answer_send(from, Err((ErrorCode::Overloaded, OVERLOADED)));
                return;
            }
            let answer = UserAnswer { from, refused, rest: rest.collect() };
            self.send_reliable(shard, Msg::Deliver { envelope: envelope.clone(), conns, answer: Some(answer) });
        } else if refused {
            self.answer_send(
                from,
                Err((ErrorCode::RecipientBusy, "every connection of the recipient is over its queue bound")),
            );
        } else {
            self.metrics.routed(RouteKind::User, Outcome::RecipientOffline);
            self.answer_send(from, Ok((Outcome::RecipientOffline, 0)));
        }
    }

    /// Queues an answer for a connection of this shard.
    pub(crate) fn reply(&self, id: ConnId, reply: Reply) {
        self.with_conn(id, |c| {
            let (_, mut tx) = c.parts(&self.metrics);
            switchboard_protocol::session::Transmit::reply(&mut tx, reply);
            c.wake_writer();
        });
    }

    /// Answers `to`, locally or through the mesh.
    pub(crate) fn answer(&self, to: Member, reply: Reply) {
        if to.shard == self.id {
            self.reply(to.conn, reply);
        } else {
            self.send_reliable(to.shard, Msg::Reply { conn: to.conn, reply });
        }
    }

    /// Tells the sender of a routed envelope what became of it.
    pub(crate) fn answer_send(&self, to: Origin, result: SendResult) {
        if to.member.shard == self.id {
            self.outcome(to, result);
        } else {
            self.send_reliable(to.member.shard, Msg::Outcome { to, result });
        }
    }

    /// Hands what became of a send to its connection's session; the answer
    /// goes out with the next [`flush_dirty`](Self::flush_dirty).
    fn outcome(&self, to: Origin, result: SendResult) {
        let mut forget = None;
        let dirty = self.with_conn(to.member.conn, |c| {
            if result.is_err() {
                // A refused send is not a delivered one: a retry must route.
                forget = Some(c.identity.clone());
            }
            if c.protocol == Protocol::Http {
                c.tx.http = Some(Box::new(match result {
                    Ok((outcome, recipients)) => HttpAnswer::Accepted { outcome, recipients },
                    Err((code, reason)) => HttpAnswer::Error { code, reason },
                }));
                c.wake_writer();
                return false;
            }
            let (session, mut tx) = c.parts(&self.metrics);
            session.handle_outcome(to.sequence, to.id, result.map(|(o, _)| o), &mut tx);
            !std::mem::replace(&mut c.dirty, true)
        });
        if let Some(identity) = forget {
            self.dedup.borrow_mut().remove(identity.user().as_str(), to.id);
        }
        if dirty == Some(true) {
            self.dirty.borrow_mut().push(to.member.conn);
        }
    }

    /// Transmits a connection's answers known so far (one `accepted` frame
    /// for a run of sends).
    pub(crate) fn flush_answers(&self, id: ConnId) {
        self.with_conn(id, |c| {
            c.dirty = false;
            let (session, mut tx) = c.parts(&self.metrics);
            session.flush_answers(&mut tx);
            if !c.tx.out.is_empty() {
                c.wake_writer();
            }
        });
    }

    /// Flushes the answers of every connection that got outcomes since the
    /// last call: once per read batch and once per batch of mesh messages.
    pub(crate) fn flush_dirty(&self) {
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for &id in &dirty {
            self.flush_answers(id);
        }
        dirty.clear();
        {
            let mut slot = self.dirty.borrow_mut();
            if slot.is_empty() {
                // Keep the allocation for the next batch.
                *slot = dirty;
            }
        }
        self.flush_writes();
    }

    /// Sends a message that must arrive (an answer the sender waits for, a
    /// delivery, a leave): if the queue to `dst` is full, it waits in this
    /// shard's backlog, behind earlier ones to `dst`, and is retried every
    /// loop turn and tick.
    ///
    /// Work that fans out (deliveries) is only started while
    /// [`room_for_work`](Self::room_for_work) holds, which bounds its part
    /// of the backlog by `limits.cross_shard_queue` per destination;
    /// answers, replies and leaves are never refused, and are bounded by
    /// the work the destination itself sent, which its own queue bounds.
    pub(crate) fn send_reliable(&self, dst: ShardId, msg: Msg) {
        if dst == self.id {
            self.handle(msg);
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        if backlog.waiting(dst) > 0 {
            backlog.push(dst, msg);
            return;
        }
        if let Err(msg) = self.shared.mesh.send(self.id, dst, msg) {
            self.metrics.cross_shard_full.inc();
            backlog.push(dst, msg);
        }
    }

    /// True if new work for `dst` may start: its backlog is below
    /// `limits.cross_shard_queue` (always true for this shard).
    fn room_for_work(&self, dst: ShardId) -> bool {
        dst == self.id || self.backlog.borrow().waiting(dst) < self.shared.config.limits.cross_shard_queue
    }

    /// Retries backlogged messages, in order per destination.
    pub(crate) fn flush_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.len == 0 {
            return;
        }
        let Backlog { queues, len } = &mut *backlog;
        for (dst, queue) in queues.iter_mut().enumerate() {
            while let Some(msg) = queue.pop_front() {
                if let Err(msg) = self.shared.mesh.send(self.id, ShardId(dst as u16), msg) {
                    queue.push_front(msg);
                    break;
                }
                *len -= 1;
            }
        }
    }

    /// Sends a message to `dst`, or handles it here if `dst` is this shard.
    /// Returns false if the queue to `dst` is full.
    pub(crate) fn send_or_handle(&self, dst: ShardId, msg: Msg) -> bool {
        if dst == self.id {
            self.handle(msg);
            true
        } else if self.backlog.borrow().waiting(dst) > 0 {
            // Behind backlogged messages: sending now would overtake them.
            self.metrics.cross_shard_full.inc();
            false
        } else {
            match self.shared.mesh.send(self.id, dst, msg) {
                Ok(()) => true,
                Err(_) => {
                    self.metrics.cross_shard_full.inc();
                    false
                }
            }
        }
    }
}
