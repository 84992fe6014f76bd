//! Identifiers shared by the shard modules: shards, connections, members
//! (a connection anywhere, of any transport) and destination places.

/// Index of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The index as `usize`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A connection on its shard: slab slot plus a generation, so a stale id
/// held by another shard never reaches a newer connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slab slot.
    pub slot: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// A connection anywhere in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its shard.
    pub shard: ShardId,
    /// Its id on that shard.
    pub conn: ConnId,
}

/// Where a destination name lies inside its envelope: messages carry this
/// rather than a second reference to the envelope's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dest {
    start: u32,
    len: u32,
}

impl Dest {
    /// The place of `name`, a slice of `envelope`.
    pub(crate) fn new(envelope: &[u8], name: &str) -> Self {
        let start = (name.as_ptr() as usize).wrapping_sub(envelope.as_ptr() as usize);
        debug_assert!(start.saturating_add(name.len()) <= envelope.len(), "the name lies in the envelope");
        Self { start: start as u32, len: name.len() as u32 }
    }

    /// The name in `envelope` (empty if it is not there).
    pub(crate) fn name<'a>(&self, envelope: &'a [u8]) -> &'a str {
        let start = self.start as usize;
        envelope.get(start..start + self.len as usize).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_found_again_by_its_place_in_the_envelope() {
        let envelope = b"....alice....".to_vec();
        let name = std::str::from_utf8(&envelope[4..9]).unwrap();
        let dest = Dest::new(&envelope, name);
        assert_eq!(dest.name(&envelope), "alice");
        // A shorter buffer than the place, or bytes that are not UTF-8,
        // name nothing (nothing panics).
        assert_eq!(dest.name(&envelope[..6]), "");
        assert_eq!(dest.name(b"....\xff\xfe...."), "");
    }
}
