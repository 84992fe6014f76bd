//! A shard's partition of the presence table and of room membership.
//!
//! Pure data structures, owned by one shard and mutated only by it: which
//! live connections each of its users has (all devices, as [`Member`]s of
//! any transport on any shard: a WebSocket connection is handed to its
//! user's owner shard, a QUIC one cannot be), and the members of the rooms
//! it owns. No I/O, no locks.

use std::collections::HashMap;
use std::hash::BuildHasher;

use smallvec::SmallVec;

use super::ids::{ConnId, Member, ShardId};

/// Seeded, stable hashing of names to owner shards.
#[derive(Debug, Clone)]
pub struct Owners {
    state: foldhash::quality::FixedState,
    shards: usize,
}

impl Owners {
    /// Owners over `shards` shards with a fixed `seed` (same seed, same
    /// placement: a restart keeps users on the same shard index).
    pub fn new(shards: usize, seed: u64) -> Self {
        assert!(shards > 0 && shards <= usize::from(u16::MAX), "shard count checked by config");
        Self { state: foldhash::quality::FixedState::with_seed(seed), shards }
    }

    /// The shard owning `name` (a user or a room; rooms are salted so that
    /// a user and a room of the same name need not share a shard).
    pub fn of(&self, kind: u8, name: &str) -> ShardId {
        let h = self.state.hash_one((kind, name));
        ShardId((h % self.shards as u64) as u16)
    }

    /// Owner of a user's presence entry.
    pub fn user(&self, user: &str) -> ShardId {
        self.of(0, user)
    }

    /// Owner of a room's membership.
    pub fn room(&self, room: &str) -> ShardId {
        self.of(1, room)
    }
}

/// Live connections of the users this shard owns.
#[derive(Debug, Default)]
pub struct Presence {
    /// One connection (the usual case) is kept inline, without an
    /// allocation of its own.
    users: HashMap<Box<str>, SmallVec<[Member; 1]>, foldhash::fast::RandomState>,
    connections: usize,
}

impl Presence {
    /// Registers a connection of `user`.
    pub fn add(&mut self, user: &str, conn: Member) {
        match self.users.get_mut(user) {
            Some(v) => v.push(conn),
            None => {
                self.users.insert(user.into(), smallvec::smallvec![conn]);
            }
        }
        self.connections += 1;
    }

    /// Removes a connection; returns false if it was not registered.
    pub fn remove(&mut self, user: &str, conn: Member) -> bool {
        let Some(v) = self.users.get_mut(user) else {
            return false;
        };
        let Some(i) = v.iter().position(|c| *c == conn) else {
            return false;
        };
        v.swap_remove(i);
        if v.is_empty() {
            self.users.remove(user);
        }
        self.connections -= 1;
        true
    }

    /// The user's live connections (empty if offline).
    pub fn connections(&self, user: &str) -> &[Member] {
        self.users.get(user).map_or(&[], |v| v.as_slice())
    }

    /// Users online on this shard.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Connections registered on this shard.
    pub fn len(&self) -> usize {
        self.connections
    }

    /// True if nobody is online here.
    pub fn is_empty(&self) -> bool {
        self.connections == 0
    }
}

/// Members of the rooms this shard owns.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<Box<str>, Vec<Member>, foldhash::fast::RandomState>,
}

impl Rooms {
    /// Adds `member`; false if it already was one.
    pub fn join(&mut self, room: &str, member: Member) -> bool {
        let members = match self.rooms.get_mut(room) {
            Some(m) => m,
            None => self.rooms.entry(room.into()).or_default(),
        };
        if members.contains(&member) {
            return false;
        }
        members.push(member);
        true
    }

    /// Removes `member`; false if it was not one. Empty rooms disappear.
    pub fn leave(&mut self, room: &str, member: Member) -> bool {
        let Some(m) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(i) = m.iter().position(|x| *x == member) else {
            return false;
        };
        m.swap_remove(i);
        if m.is_empty() {
            self.rooms.remove(room);
        }
        true
    }

    /// The room's members.
    pub fn members(&self, room: &str) -> &[Member] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Number of rooms with members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// True if no room has members.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// Groups members by shard, preserving their order within each shard.
pub fn group_by_shard<'a>(members: impl IntoIterator<Item = &'a Member>, out: &mut Vec<(ShardId, Vec<ConnId>)>) {
    out.clear();
    for m in members {
        match out.iter_mut().find(|(s, _)| *s == m.shard) {
            Some((_, v)) => v.push(m.conn),
            None => out.push((m.shard, vec![m.conn])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnId {
        ConnId { slot, generation: 1 }
    }

    fn local(slot: u32) -> Member {
        Member { shard: ShardId(0), conn: conn(slot) }
    }

    #[test]
    fn presence_tracks_every_device() {
        let mut p = Presence::default();
        p.add("bob", local(1));
        p.add("bob", local(2));
        p.add("carol", local(3));
        assert_eq!(p.connections("bob"), [local(1), local(2)]);
        assert_eq!((p.users(), p.len()), (2, 3));
        assert!(p.remove("bob", local(1)));
        assert!(!p.remove("bob", local(1)), "double remove");
        assert!(!p.remove("nobody", local(1)));
        assert_eq!(p.connections("bob"), [local(2)]);
        assert!(p.remove("bob", local(2)));
        assert_eq!(p.connections("bob"), []);
        assert_eq!(p.users(), 1);
    }

    #[test]
    fn rooms_join_leave_and_group() {
        let mut r = Rooms::default();
        let m = |s, c| Member { shard: ShardId(s), conn: conn(c) };
        assert!(r.join("lobby", m(0, 1)));
        assert!(!r.join("lobby", m(0, 1)));
        assert!(r.join("lobby", m(1, 2)));
        assert!(r.join("lobby", m(0, 3)));
        let mut groups = Vec::new();
        group_by_shard(r.members("lobby"), &mut groups);
        assert_eq!(groups, [(ShardId(0), vec![conn(1), conn(3)]), (ShardId(1), vec![conn(2)])]);
        assert!(r.leave("lobby", m(0, 1)));
        assert!(!r.leave("lobby", m(0, 1)));
        assert!(r.leave("lobby", m(1, 2)) && r.leave("lobby", m(0, 3)));
        assert!(r.is_empty());
    }

    #[test]
    fn owners_are_stable_and_spread() {
        let o = Owners::new(4, 7);
        assert_eq!(o.user("alice"), Owners::new(4, 7).user("alice"));
        let mut counts = [0; 4];
        for i in 0..4000 {
            counts[o.user(&format!("user-{i}")).index()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(Owners::new(1, 0).user("x"), ShardId(0));
    }
}
