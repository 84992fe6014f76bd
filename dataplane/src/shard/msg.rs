//! Messages: between shards (routing, rooms, presence, answers, hand-offs)
//! and from outside into a shard (typed commands with a reply channel).

use bytes::Bytes;
use switchboard_protocol::session::Reply;
use switchboard_protocol::{EnvelopeId, ErrorCode, Outcome};

use super::handoff::Handoff;
use super::ids::{ConnId, Dest, Member, ShardId};

/// What became of a routed send: its outcome and the live connections it
/// was written to, or the error that refused it.
pub(crate) type SendResult = Result<(Outcome, u32), (ErrorCode, &'static str)>;

/// The send a routed envelope answers: its connection and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The sending connection.
    pub(crate) member: Member,
    /// The send's sequence number on that connection.
    pub(crate) sequence: u64,
    /// The envelope's id.
    pub(crate) id: EnvelopeId,
}

/// The answer to a send to a user whose connections are on other shards
/// than the user's owner, and which no connection on the owner took: it
/// travels with the deliveries, shard after shard, until one connection
/// takes the envelope (`delivered`) or none is left (`recipient-busy` if
/// one refused it, `recipient-offline` if all had gone).
pub(crate) struct UserAnswer {
    /// The send it answers.
    pub(crate) from: Origin,
    /// True if a connection earlier on the way refused the envelope.
    pub(crate) refused: bool,
    /// The connections of the later shards, tried in turn (empty unless
    /// the user is connected on more than two shards).
    pub(crate) rest: Vec<(ShardId, Vec<ConnId>)>,
}

/// A message between shards, or from outside into a shard.
pub(crate) enum Msg {
    /// Deliver to every live connection of `user` (owned by the receiver).
    ToUser { envelope: Bytes, user: Dest, from: Origin, exclude: Option<Member> },
    /// Fan out to the members of `room` (owned by the receiver).
    ToRoom { envelope: Bytes, room: Dest, from: Origin, exclude: Option<Member> },
    /// Deliver to these connections of the receiver; with `answer`, the
    /// receiver also owes the sender its answer (see [`UserAnswer`]).
    Deliver { envelope: Bytes, conns: Vec<ConnId>, answer: Option<UserAnswer> },
    /// Add a member to a room owned by the receiver.
    Join { room: Box<str>, member: Member, request_id: u32 },
    /// Remove a member; `request_id` is `None` when its connection closed.
    Leave { room: Box<str>, member: Member, request_id: Option<u32> },
    /// How many connections does `user` (owned by the receiver) have?
    PresenceQuery { user: Box<str>, from: Member, request_id: u32 },
    /// An answer for a connection of the receiver.
    Reply { conn: ConnId, reply: Reply },
    /// What became of a send by a connection of the receiver.
    Outcome { to: Origin, result: SendResult },
    /// A connection that authenticated on another shard, for its owner.
    Handoff(Box<Handoff>),
    /// From outside the shards.
    Command(Command),
}

/// One live connection, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConnectionInfo {
    /// Shard it lives on.
    pub shard: u16,
    /// Connection id on that shard.
    pub conn: String,
    /// `ws` or `http`.
    pub protocol: &'static str,
    /// Device id from the token, if any.
    pub device: Option<String>,
    /// Peer address.
    pub peer: String,
    /// Seconds since it connected.
    pub connected_secs: u64,
}

/// Typed commands from outside the shards, each with a reply channel.
pub(crate) enum Command {
    /// The connections of a user owned by this shard.
    Presence {
        /// The user.
        user: Box<str>,
        /// Where the answer goes.
        reply: std::sync::mpsc::SyncSender<Vec<ConnectionInfo>>,
    },
    /// Stop accepting, close every connection with `shutting-down`, flush.
    Shutdown,
    /// Use reloaded keys (SIGHUP) and forget cached verifications.
    ReloadKeys(crate::auth::Verifier),
    /// A fault injected by the admin API, for the fault tests (debug
    /// builds with `SWITCHBOARD_FAULT_INJECTION=1` only).
    Fault(Fault),
}

/// A fault to inject into a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Panic on the shard thread.
    Panic,
    /// Block the shard thread for this long (a shard stuck in a system call
    /// or a long computation).
    Stall(std::time::Duration),
}
