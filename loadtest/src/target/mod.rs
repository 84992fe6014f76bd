//! The servers the generator drives, one module per protocol.
//!
//! A protocol implements [`Protocol`]: a blocking `connect` (handshake,
//! authentication, subscription) done before the run, then, on the hot path,
//! `encode_message` (append one message to a connection's write buffer),
//! `end_turn` (the turn's messages are complete: frame them if the target
//! batches) and `decode` (consume received bytes, answering what the
//! protocol requires, e.g. pings or delivery acks, into the write buffer).
//! The driver is generic over it, so each target gets its own
//! monomorphised event loop. Modules here do no polling and keep no clock.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::accounting::Answer;

pub mod mqtt;
pub mod nats;
pub mod switchboard;
pub mod ws;

/// Which end of a pair a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the pair's messages (and reads the server's answers).
    Sender,
    /// Receives the pair's messages (subscribes, or joins the room).
    Receiver,
    /// Connects and authenticates only (`idle`, `connect`): no
    /// subscription.
    Idle,
}

/// Where a run's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// Pair `i`'s sender to pair `i`'s receiver (a user, topic or subject
    /// per pair).
    #[default]
    Pairs,
    /// One sender to every receiver: one room, topic or subject for the
    /// whole run.
    Fanout,
}

/// Something received on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A message for this (receiving) connection: the envelope bytes.
    Message(&'a [u8]),
    /// The server's answer to a send, naming the envelope id if it could.
    Answer {
        /// The envelope id.
        id: Option<[u8; 16]>,
        /// What the server did.
        answer: Answer,
        /// The protocol error code, for refusals.
        code: Option<u16>,
    },
}

/// Why a connection stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The server closed the connection, with a reason if it gave one.
    #[error("server closed the connection: {0}")]
    Closed(String),
    /// The server sent something this client does not understand.
    #[error("protocol violation: {0}")]
    Violation(String),
}

/// A connection after its handshake.
#[derive(Debug)]
pub struct Connected<C> {
    /// The socket (blocking; the driver makes it non-blocking).
    pub stream: TcpStream,
    /// The protocol state.
    pub conn: C,
    /// Bytes received after the handshake, to decode first.
    pub leftover: Vec<u8>,
}

/// One protocol: how to connect, encode a message and decode what arrives.
pub trait Protocol: Sync {
    /// Per-connection protocol state.
    type Conn: Send;

    /// True when the server answers every send (the closed loop then counts
    /// answers; otherwise it counts receipts).
    const ANSWERS: bool;

    /// Opens, authenticates and (for a receiver) subscribes connection
    /// `role` of pair `pair`. Blocking, bounded by `timeout`.
    fn connect(&self, pair: usize, role: Role, timeout: Duration) -> anyhow::Result<Connected<Self::Conn>>;

    /// What a client sends before closing politely (WebSocket close, MQTT
    /// DISCONNECT); may be empty.
    const GOODBYE: &'static [u8];

    /// The sending state of connection `pair` without a server, to measure
    /// the generator's own encode-and-write ceiling (`loadtest sink`).
    fn offline_conn(&self, pair: usize) -> Self::Conn;

    /// `mesh`: points the connection's sends at user `user`'s topic or
    /// subject (the [`Topology::Pairs`] one of pair `user`). Switchboard
    /// addresses the envelope itself, so the default does nothing.
    fn retarget(_conn: &mut Self::Conn, _user: usize) {}

    /// Appends one message (the bytes `msg`) for the pair's receiver.
    fn encode_message(conn: &Self::Conn, out: &mut Vec<u8>, msg: &[u8]);

    /// Ends a send turn: the messages [`Protocol::encode_message`] appended
    /// to `out` from offset `start` on are all this turn sends, and are
    /// about to be written. A target whose own clients write such a batch as
    /// one unit frames it here (NATS over WebSocket: one binary frame per
    /// turn, see [`ws::Tunneled::FRAME_PER_TURN`]); by default each message
    /// is complete as encoded.
    fn end_turn(_conn: &Self::Conn, _out: &mut Vec<u8>, _start: usize) {}

    /// Decodes complete units from the front of `buf`, passing what matters
    /// to `on` and appending any required replies to `out`. Returns the
    /// number of bytes consumed (an incomplete unit stays in `buf`).
    fn decode(
        conn: &mut Self::Conn,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Inbound<'_>),
    ) -> Result<usize, ProtoError>;
}

/// Connects with a deadline and sets the socket options every target uses.
pub(crate) fn tcp_connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Reads into `buf` until `done(buf)` returns the length of the handshake
/// answer (bytes after it are left in `buf`), within `timeout` and 64 KiB.
pub(crate) fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
    mut done: impl FnMut(&[u8]) -> anyhow::Result<Option<usize>>,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = done(buf)? {
            return Ok(n);
        }
        if buf.len() > 64 * 1024 {
            bail!("handshake answer too long");
        }
        if Instant::now() >= deadline {
            bail!("handshake timed out");
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("server closed the connection during the handshake"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                bail!("handshake timed out")
            }
            Err(e) => return Err(e).context("reading the handshake answer"),
        }
    }
}

/// The byte stream a protocol's handshake runs over: the socket itself, or
/// WebSocket frames on it ([`ws::WsTunnel`]). Blocking.
pub trait HandshakeIo {
    /// Writes all of `bytes`.
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()>;

    /// Reads into `buf` until `done(buf)` returns the length of the answer
    /// (bytes after it stay in `buf`), within `timeout`.
    fn read_until(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        done: impl FnMut(&[u8]) -> anyhow::Result<Option<usize>>,
    ) -> anyhow::Result<usize>;
}

impl HandshakeIo for TcpStream {
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        write_all(self, bytes)
    }

    fn read_until(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        done: impl FnMut(&[u8]) -> anyhow::Result<Option<usize>>,
    ) -> anyhow::Result<usize> {
        read_until(self, buf, timeout, done)
    }
}

/// Writes all of `bytes` (blocking, handshake only).
pub(crate) fn write_all(s: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    s.write_all(bytes).context("writing the handshake")
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
