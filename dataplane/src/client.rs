//! A small blocking Switchboard client over WebSocket, for the `send` and
//! `listen` subcommands and for tests. It uses tungstenite's own client
//! (an implementation independent of the server's codec).

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_protocol::frame::FrameType;
use switchboard_protocol::{Frame, Limits};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// A connected, authenticated client. It counts what protocol 1.1 numbers
/// implicitly: the `send` frames it wrote (their sequence numbers, which
/// `accepted` and `error` answers name) and the `deliver` frames it
/// received (which [`ack`](Self::ack) acknowledges cumulatively).
pub struct Client {
    ws: WebSocket<TcpStream>,
    limits: Limits,
    sends: u64,
    deliveries: u64,
    acked: u64,
}

impl Client {
    /// Connects to `url` (`ws://host:port/connect`) with a bearer token.
    pub fn connect(url: &str, token: &str) -> anyhow::Result<Self> {
        let mut request = url.into_client_request().context("invalid URL")?;
        let headers = request.headers_mut();
        headers.insert("Authorization", format!("Bearer {token}").parse().context("token is not a header value")?);
        headers.insert("Sec-WebSocket-Protocol", "switchboard.v1".parse()?);
        let uri = request.uri();
        let host = uri.host().context("URL has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port)).with_context(|| format!("cannot connect to {host}:{port}"))?;
        stream.set_nodelay(true)?;
        let (ws, _) = tungstenite::client(request, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                anyhow::anyhow!("server refused the connection: {} {}", resp.status(), body)
            }
            other => anyhow::anyhow!("handshake failed: {other}"),
        })?;
        Ok(Self {
            ws,
            limits: Limits::default().with_max_envelope_len(switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING),
            sends: 0,
            deliveries: 0,
            acked: 0,
        })
    }

    /// Sets how long [`recv`](Self::recv) waits.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> anyhow::Result<()> {
        self.ws.get_ref().set_read_timeout(timeout)?;
        Ok(())
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame<'_>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(frame.to_vec().into()))?;
        if matches!(frame, Frame::Send { .. }) {
            self.sends += 1;
        }
        Ok(())
    }

    /// The sequence number of the last `send` written (the first is 1).
    pub fn sends(&self) -> u64 {
        self.sends
    }

    /// `deliver` frames received so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Acknowledges every delivery received so far (one cumulative
    /// `delivery-ack`, none if nothing new arrived).
    pub fn ack(&mut self) -> anyhow::Result<()> {
        if self.deliveries > self.acked {
            self.send(&Frame::DeliveryAck { through: self.deliveries })?;
            self.acked = self.deliveries;
        }
        Ok(())
    }

    /// Receives the next binary message (a frame's bytes); `None` on close.
    pub fn recv(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    if b.get(..2) == Some(&[switchboard_protocol::frame::VERSION, FrameType::Deliver as u8][..]) {
                        self.deliveries += 1;
                    }
                    return Ok(Some(b.to_vec()));
                }
                Ok(Message::Close(frame)) => {
                    if let Some(f) = frame
                        && u16::from(f.code) != 1000
                    {
                        bail!("server closed the connection: {} {}", u16::from(f.code), f.reason);
                    }
                    return Ok(None);
                }
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return Ok(None),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    bail!("timed out")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decoding limits for received frames.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Closes the connection politely.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// The `sub` claim of a JWT, read without verifying it (the server
/// verifies; the client only needs its own user id to fill in the sender).
pub fn token_subject(token: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("token payload is not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).context("token payload is not JSON")?;
    claims["sub"].as_str().map(str::to_owned).context("token has no sub claim")
}
