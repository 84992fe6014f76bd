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

impl Cli {
    /// Runs the chosen subcommand, writing to stdout.
    pub fn run(self) -> anyhow::Result<()> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = self.data_dir {
            config.data_dir = Some(dir);
        }
        let stdout = std::io::stdout();
        match self.command {
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
    let device = args
        .device
        .as_deref()
        .map(DeviceId::parse)
        .transpose()
        .context("--device")?;
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
