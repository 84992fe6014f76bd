//! `switchboard envelope encode|decode`: SecureEnvelopes to and from files,
//! for scripting and debugging.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use serde::Serialize;
use switchboard_protocol::envelope::EnvelopeFlags;
use switchboard_protocol::frame::{FrameType, SEND_HEADER};
use switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING;
use switchboard_protocol::{Destination, DeviceId, Envelope, EnvelopeBuilder, EnvelopeId, Frame, Limits, UserId};

/// `switchboard envelope …`
#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Build an envelope and write its bytes to stdout.
    Encode(Box<EncodeArgs>),
    /// Read an envelope (or a send/deliver frame) from stdin and print it as
    /// one JSON line, payload in base64. Exits non-zero if it is invalid.
    Decode(DecodeArgs),
}

/// `switchboard envelope encode` arguments.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Sender user id; the server requires it to equal the token's user.
    #[arg(long)]
    from: String,
    #[command(flatten)]
    fields: EnvelopeFields,
    /// Write a complete `send` frame (4-byte header + envelope) instead of
    /// the bare envelope.
    #[arg(long)]
    frame: bool,
}

/// Envelope fields shared by `envelope encode` and `send`.
#[derive(Debug, Args)]
pub struct EnvelopeFields {
    /// Sender device id.
    #[arg(long)]
    device: Option<String>,
    /// Destination: `user:<id>`, `room:<name>` or `service:<name>`.
    #[arg(long)]
    pub(crate) to: String,
    /// File whose bytes are the payload (`-` for stdin). Default: empty payload.
    #[arg(long, value_name = "FILE", conflicts_with = "payload")]
    payload_file: Option<PathBuf>,
    /// Payload given as text on the command line.
    #[arg(long, value_name = "TEXT")]
    payload: Option<String>,
    /// Envelope id as a UUID. Default: a new UUIDv7.
    #[arg(long)]
    id: Option<String>,
    /// Creation time in ms since the Unix epoch. Default: now.
    #[arg(long, value_name = "MS")]
    created_at_ms: Option<u64>,
    /// Lifetime, e.g. `30s` or `7days`; 0 means the server's maximum.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Priority, 0 (lowest) to 255; 128 is normal.
    #[arg(long, default_value_t = EnvelopeBuilder::NORMAL_PRIORITY)]
    priority: u8,
    /// MIME type of the payload.
    #[arg(long)]
    content_type: Option<String>,
    /// Flag to set (repeatable): persist-if-offline, no-push, ack-requested, echo-to-sender.
    #[arg(long = "flag", value_name = "FLAG")]
    flags: Vec<String>,
    /// Metadata entry `key=value` (repeatable, at most 16).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
}

/// `switchboard envelope decode` arguments.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Input is a `send` or `deliver` frame, not a bare envelope.
    #[arg(long)]
    frame: bool,
}

impl EnvelopeCommand {
    /// Runs the command with the given stdin and stdout.
    pub fn run(self, input: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            Self::Encode(args) => {
                let bytes = encode(&args.from, &args.fields, input, SystemTime::now())?;
                if args.frame {
                    out.write_all(&SEND_HEADER)?;
                }
                out.write_all(&bytes)?;
            }
            Self::Decode(args) => {
                let bytes = read_bounded(input)?;
                let line = decode(&bytes, args.frame)?;
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Reads at most one byte more than the largest envelope allowed.
fn read_bounded(input: &mut dyn Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = (MAX_ENVELOPE_LEN_CEILING + 8) as u64;
    input.take(limit).read_to_end(&mut bytes).context("reading stdin")?;
    if bytes.len() as u64 == limit {
        bail!("input is larger than {MAX_ENVELOPE_LEN_CEILING} bytes");
    }
    Ok(bytes)
}

/// Builds the envelope `fields` describe, sent by `from`.
pub(crate) fn encode(
    from: &str,
    args: &EnvelopeFields,
    stdin: &mut dyn Read,
    now: SystemTime,
) -> anyhow::Result<Vec<u8>> {
    let from = UserId::parse(from).context("--from")?;
    let to = Destination::parse(&args.to).context("--to")?;
    let now_ms = now.duration_since(UNIX_EPOCH).context("system clock before 1970")?.as_millis() as u64;
    let id = match &args.id {
        Some(id) => id.parse::<EnvelopeId>().context("--id")?,
        None => {
            let mut random = [0u8; 10];
            getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            EnvelopeId::new_v7(now_ms, &random)
        }
    };
    let payload = match (args.payload_file.as_deref(), &args.payload) {
        (_, Some(text)) => text.clone().into_bytes(),
        (None, None) => Vec::new(),
        (Some(p), None) if p.as_os_str() == "-" => read_bounded(stdin)?,
        (Some(p), None) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    };
    let ttl_ms = u32::try_from(args.ttl.as_millis()).context("--ttl is longer than 49 days")?;
    let mut flags = EnvelopeFlags::empty();
    for f in &args.flags {
        flags = flags
            | EnvelopeFlags::from_name(f).with_context(|| {
                let names: Vec<_> = EnvelopeFlags::NAMES.iter().map(|(n, _)| *n).collect();
                format!("--flag {f:?}: expected one of {}", names.join(", "))
            })?;
    }
    let mut b = EnvelopeBuilder::new(id, from, to, args.created_at_ms.unwrap_or(now_ms))
        .ttl_ms(ttl_ms)
        .priority(args.priority)
        .flags(flags)
        .payload(&payload);
    if let Some(d) = &args.device {
        b = b.sender_device(DeviceId::parse(d).context("--device")?);
    }
    if let Some(ct) = &args.content_type {
        b = b.content_type(ct);
    }
    for m in &args.metadata {
        let (k, v) = m.split_once('=').with_context(|| format!("--meta {m:?}: expected KEY=VALUE"))?;
        b = b.metadata(k, v);
    }
    b.build().context("invalid envelope")
}

/// The JSON form printed by `decode`. Field order is part of the output.
#[derive(Serialize)]
struct EnvelopeJson<'a> {
    id: String,
    sender: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_device: Option<&'a str>,
    destination: String,
    created_at_ms: u64,
    ttl_ms: u32,
    priority: u8,
    flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    metadata: serde_json::Map<String, serde_json::Value>,
    payload: String,
}

fn decode(bytes: &[u8], framed: bool) -> anyhow::Result<String> {
    let envelope_bytes = if framed {
        let limits = Limits::default().with_max_envelope_len(MAX_ENVELOPE_LEN_CEILING);
        match Frame::decode(bytes, &limits).context("invalid frame")? {
            Frame::Send { envelope, .. } | Frame::Deliver { envelope, .. } => envelope,
            other => {
                bail!("expected a {} or {} frame, got {}", FrameType::Send, FrameType::Deliver, other.frame_type())
            }
        }
    } else {
        bytes
    };
    let limits = Limits::default().with_max_envelope_len(MAX_ENVELOPE_LEN_CEILING);
    let env = Envelope::parse(envelope_bytes, &limits).context("invalid envelope")?;
    envelope_json(&env)
}

/// One envelope as a JSON line (payload in base64), as `decode` and
/// `listen` print it.
pub(crate) fn envelope_json(env: &Envelope<'_>) -> anyhow::Result<String> {
    let json = EnvelopeJson {
        id: env.id().to_string(),
        sender: env.sender().as_str(),
        sender_device: env.sender_device().map(|d| d.as_str()),
        destination: env.destination().to_string(),
        created_at_ms: env.created_at_ms(),
        ttl_ms: env.ttl_ms(),
        priority: env.priority(),
        flags: env.flags().names().collect(),
        content_type: env.content_type(),
        metadata: env.metadata().map(|(k, v)| (k.to_owned(), v.into())).collect(),
        payload: BASE64.encode(env.payload()),
    };
    Ok(serde_json::to_string(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> EncodeArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: EncodeArgs,
        }
        let mut argv = vec!["p", "--from", "alice", "--to", "user:bob"];
        argv.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(argv).unwrap().a
    }

    #[test]
    fn encode_then_decode() {
        let a = args(&[
            "--id",
            "01935f6a-1b2c-7000-8000-00000000002a",
            "--created-at-ms",
            "1764000000000",
            "--ttl",
            "1m",
            "--flag",
            "no-push",
            "--meta",
            "k=v=w",
            "--content-type",
            "text/plain",
            "--payload-file",
            "-",
        ]);
        let bytes = encode(&a.from, &a.fields, &mut &b"hi"[..], SystemTime::now()).unwrap();
        let line = decode(&bytes, false).unwrap();
        assert_eq!(
            line,
            r#"{"id":"01935f6a-1b2c-7000-8000-00000000002a","sender":"alice","destination":"user:bob","created_at_ms":1764000000000,"ttl_ms":60000,"priority":128,"flags":["no-push"],"content_type":"text/plain","metadata":{"k":"v=w"},"payload":"aGk="}"#
        );
        let mut framed = SEND_HEADER.to_vec();
        framed.extend_from_slice(&bytes);
        assert_eq!(decode(&framed, true).unwrap(), line);
        assert!(decode(&framed, false).is_err());
    }

    #[test]
    fn bad_arguments_are_reported() {
        let now = SystemTime::now();
        let enc = |a: EncodeArgs| encode(&a.from, &a.fields, &mut &[][..], now);
        assert!(enc(args(&["--flag", "loud"])).is_err());
        assert!(enc(args(&["--meta", "novalue"])).is_err());
        assert!(enc(args(&["--id", "xyz"])).is_err());
        let mut a = args(&[]);
        a.fields.to = "bob".into();
        assert!(enc(a).is_err());
        assert_eq!(
            Envelope::parse(&enc(args(&["--payload", "text"])).unwrap(), &Limits::default()).unwrap().payload(),
            b"text"
        );
        let err = decode(b"garbage!", false).unwrap_err();
        assert!(format!("{err:#}").contains("invalid envelope"), "{err:#}");
    }
}
