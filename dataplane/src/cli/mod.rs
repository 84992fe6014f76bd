//! The `switchboard` command line: argument parsing and the client
//! subcommands. Each subcommand is a function of its arguments; I/O stays
//! at the edges so the logic is testable.

mod envelope;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_protocol::{DeviceId, UserId};

use crate::auth::{self, TokenRequest};
use crate::config::Config;

/// Switchboard: routes sealed envelopes between clients in real time.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file. Without one, embedded defaults are used.
    #[arg(long, short = 'c', global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for durable state (mailboxes, the generated development
    /// JWT secret). Default: $XDG_DATA_HOME/switchboard or
    /// ~/.local/share/switchboard.
    #[arg(long, global = true, env = "SWITCHBOARD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded defaults: loopback ports 8080 and 8081,
    /// one shard per core, the development JWT secret).
    Serve(ServeArgs),
    /// Send one envelope over WebSocket and print the server's answer.
    Send(SendArgs),
    /// Receive envelopes over WebSocket, print one JSON line each, and
    /// acknowledge them.
    Listen(ListenArgs),
    /// Print a signed development token (HS256 JWT) for a user.
    ///
    /// The token is signed with the development secret: $SWITCHBOARD_JWT_SECRET,
    /// else `auth.jwt_secret` from the config file, else the secret generated
    /// once into the data directory, which `switchboard serve` uses too.
    Token(TokenArgs),
    /// Encode or decode SecureEnvelopes.
    #[command(subcommand)]
    Envelope(envelope::EnvelopeCommand),
}

/// `switchboard token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User id the token authenticates (becomes the `sub` claim and the
    /// only sender the holder may use).
    #[arg(long, short = 'u')]
    pub user: String,
    /// Device id (the `dev` claim), to tell a user's connections apart.
    #[arg(long, short = 'd')]
    pub device: Option<String>,
    /// Lifetime of the token, e.g. `90s`, `15m`, `1h`, `30days`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Role to grant (repeatable), e.g. `--role admin` for the admin API.
    #[arg(long = "role", short = 'r', value_name = "ROLE")]
    pub roles: Vec<String>,
}

/// `switchboard serve` arguments; each overrides the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Client address (WebSocket and HTTP), e.g. 127.0.0.1:8080.
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Admin address (health, metrics, presence), e.g. 127.0.0.1:8081.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Number of shards; 0 = one per core.
    #[arg(long, env = "SWITCHBOARD_SHARDS")]
    pub shards: Option<usize>,
    /// I/O driver: epoll (default), uring, or auto (io_uring, else epoll).
    #[arg(long, env = "SWITCHBOARD_IO_DRIVER", value_parser = ["auto", "uring", "epoll"])]
    pub io_driver: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Where and as whom a client connects.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Server WebSocket URL.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "ws://127.0.0.1:8080/connect")]
    pub url: String,
    /// JWT to authenticate with (see `switchboard token`).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Seconds to wait for the server's answers.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// `switchboard send` arguments.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server and token.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The envelope to send.
    #[command(flatten)]
    pub envelope: envelope::EnvelopeFields,
}

/// `switchboard listen` arguments.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Server and token.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many envelopes.
    #[arg(long)]
    pub count: Option<u64>,
    /// Join this room first (repeatable).
    #[arg(long = "join", value_name = "ROOM")]
    pub rooms: Vec<String>,
    /// Exit 0 when nothing arrives for --timeout seconds instead of failing.
    #[arg(long)]
    pub idle_ok: bool,
    /// Before exiting, leave the joined rooms with leave-room frames (each
    /// answered `done`) instead of letting the close remove the membership.
    #[arg(long, requires = "rooms")]
    pub leave: bool,
}

impl Cli {
    /// Runs the chosen subcommand, writing to stdout.
    pub fn run(self) -> anyhow::Result<()> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = self.data_dir {
            config.data_dir = Some(dir);
        }
        let stdout = std::io::stdout();
        match self.command {
            Command::Serve(args) => serve(config, args),
            Command::Send(args) => send(&args, &mut stdout.lock()),
            Command::Listen(args) => listen(&args, &mut stdout.lock()),
            Command::Token(args) => {
                let token = token(&config, &args, SystemTime::now())?;
                let mut out = stdout.lock();
                writeln!(out, "{token}")?;
                out.flush()?;
                Ok(())
            }
            Command::Envelope(cmd) => cmd.run(&mut std::io::stdin().lock(), &mut stdout.lock()),
        }
    }
}

/// Issues the token `args` describe.
fn token(config: &Config, args: &TokenArgs, now: SystemTime) -> anyhow::Result<String> {
    let user = UserId::parse(&args.user).context("--user")?;
    let device = args.device.as_deref().map(DeviceId::parse).transpose().context("--device")?;
    let secret = config.jwt_secret()?;
    let req = TokenRequest {
        user,
        device,
        roles: args.roles.clone(),
        ttl: args.ttl,
        issuer: &config.auth.issuer,
        audience: &config.auth.audience,
    };
    Ok(auth::issue_hs256(&req, &secret, now)?)
}

fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(a) = args.listen {
        config.server.listen = a;
    }
    if let Some(a) = args.admin_listen {
        config.server.admin_listen = a;
    }
    if let Some(n) = args.shards {
        config.server.shards = n;
    }
    if let Some(d) = args.io_driver.as_deref() {
        config.io.driver = match d {
            "uring" => crate::config::IoDriver::Uring,
            "epoll" => crate::config::IoDriver::Epoll,
            _ => crate::config::IoDriver::Auto,
        };
    }
    config.validate()?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    crate::logging::init();
    crate::server::serve(config)
}

fn send(args: &SendArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use switchboard_protocol::Frame;
    let from = crate::client::token_subject(&args.connect.token)?;
    let bytes = envelope::encode(&from, &args.envelope, &mut std::io::stdin().lock(), SystemTime::now())?;
    let mut client = crate::client::Client::connect(&args.connect.url, &args.connect.token)?;
    client.set_timeout(Some(Duration::from_secs(args.connect.timeout)))?;
    let id = switchboard_protocol::Envelope::parse(&bytes, client.limits()).map(|e| e.id()).ok();
    // The connection's first send: sequence 1, answered by the first
    // `accepted` entry (every entry covers it) or an `error`.
    client.send(&Frame::Send { no_answer: false, envelope: &bytes })?;
    loop {
        let msg = client.recv()?.context("connection closed before the answer")?;
        match Frame::decode(&msg, client.limits())? {
            Frame::Accepted(confirms) => {
                let outcome = confirms.iter().next().map_or("delivered", |c| c.outcome.name());
                let id = id.map(|i| i.to_string());
                writeln!(out, "{}", serde_json::json!({"id": id, "outcome": outcome}))?;
                client.close();
                return Ok(());
            }
            Frame::Error(e) => {
                let name = e.error_code().map_or("unknown", |c| c.name());
                anyhow::bail!("server refused the envelope: {name} ({}): {}", e.code, e.reason);
            }
            _ => continue,
        }
    }
}

fn listen(args: &ListenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use switchboard_protocol::{Envelope, Frame, RoomName};
    let mut client = crate::client::Client::connect(&args.connect.url, &args.connect.token)?;
    client.set_timeout(Some(Duration::from_secs(args.connect.timeout)))?;
    for (i, room) in args.rooms.iter().enumerate() {
        let room = RoomName::parse(room).context("--join")?;
        client.send(&Frame::JoinRoom { request_id: i as u32, room })?;
        loop {
            let msg = client.recv()?.context("connection closed while joining")?;
            match Frame::decode(&msg, client.limits())? {
                Frame::Done { .. } => break,
                Frame::Error(e) => anyhow::bail!("cannot join {room}: {}", e.reason),
                _ => continue,
            }
        }
    }
    // Ready to receive: scripts may wait for this line on stderr.
    eprintln!("listening");
    let mut received = 0u64;
    while args.count.is_none_or(|c| received < c) {
        let msg = match client.recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) if args.idle_ok && e.to_string() == "timed out" => break,
            Err(e) => return Err(e),
        };
        let envelope = match Frame::decode(&msg, client.limits())? {
            Frame::Deliver { envelope, .. } => {
                let env = Envelope::parse(envelope, client.limits()).context("server delivered an invalid envelope")?;
                envelope::envelope_json(&env)?
            }
            _ => continue,
        };
        writeln!(out, "{envelope}")?;
        out.flush()?;
        received += 1;
        client.ack()?;
    }
    if args.leave {
        for (i, room) in args.rooms.iter().enumerate() {
            let room = RoomName::parse(room).context("--join")?;
            let request_id = (args.rooms.len() + i) as u32;
            client.send(&Frame::LeaveRoom { request_id, room })?;
            loop {
                let msg = client.recv()?.context("connection closed while leaving")?;
                match Frame::decode(&msg, client.limits())? {
                    Frame::Done { request_id: r } if r == request_id => break,
                    Frame::Error(e) => anyhow::bail!("cannot leave {room}: {}", e.reason),
                    // Late deliveries: acknowledge, not printed (--count was reached).
                    Frame::Deliver { .. } => client.ack()?,
                    _ => continue,
                }
            }
        }
        eprintln!("left {} room(s)", args.rooms.len());
    }
    client.close();
    Ok(())
}
