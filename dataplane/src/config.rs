//! Configuration: the TOML file, environment overrides and where the data
//! directory is.
//!
//! Precedence, highest first: command-line flags, environment variables
//! (`SWITCHBOARD_*`), the TOML file given with `--config`, embedded
//! defaults. With no configuration at all everything works on loopback with
//! a development JWT secret generated once into the data directory, so that
//! `switchboard serve` and `switchboard token` agree.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::AuthConfig;

/// Environment variable holding the HS256 development secret.
pub const JWT_SECRET_ENV: &str = "SWITCHBOARD_JWT_SECRET";
/// File in the data directory holding the generated development secret.
pub const JWT_SECRET_FILE: &str = "jwt-secret";
/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the
/// hash size, 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// The TOML configuration file. Unknown keys are errors, so a typo is
/// reported instead of silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for durable state (mailboxes, the generated dev secret).
    pub data_dir: Option<PathBuf>,
    /// Listeners and sharding.
    pub server: ServerConfig,
    /// I/O driver.
    pub io: IoConfig,
    /// Bounds on connections, queues and rates.
    pub limits: LimitsConfig,
    /// Authentication settings.
    pub auth: AuthConfig,
    /// TLS on the client port.
    pub tls: TlsConfig,
}

/// `[tls]` section: with both files set, the client port speaks TLS only
/// (`wss://`, `https://`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client port: WebSocket (`GET /connect`) and HTTP (`POST /send`).
    pub listen: SocketAddr,
    /// Admin port: health, readiness, metrics, presence.
    pub admin_listen: SocketAddr,
    /// Number of shards (one thread and reactor each); 0 = one per core.
    pub shards: usize,
    /// Pin each shard's thread to a core.
    pub pin_cores: bool,
    /// Seed of the hash placing users and rooms on shards.
    pub placement_seed: u64,
    /// How long a graceful shutdown may take to flush queues, in ms.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            shards: 0,
            pin_cores: true,
            placement_seed: 0x5357_4254_4348_4244,
            shutdown_grace_ms: 5_000,
        }
    }
}

/// Which I/O driver the shards use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only; fail at start if unavailable.
    Uring,
    /// epoll (the default: faster on every workload measured, see
    /// BENCHMARKS.md, "io_uring against epoll").
    #[default]
    Epoll,
}

/// `[io]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// `epoll` (default), `uring` or `auto`.
    pub driver: IoDriver,
    /// io_uring: run completion work when the shard enters the kernel
    /// rather than interrupting it (`IORING_SETUP_COOP_TASKRUN`).
    pub uring_coop_taskrun: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self { driver: IoDriver::Epoll, uring_coop_taskrun: true }
    }
}

/// `[limits]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest envelope accepted, in bytes.
    pub max_envelope_bytes: usize,
    /// Longest lifetime of an envelope, in ms (also the ttl of ttl 0).
    pub max_ttl_ms: u32,
    /// Connections the whole server accepts.
    pub max_connections: usize,
    /// Connections accepted from one IP address.
    pub max_connections_per_ip: usize,
    /// Rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// Bytes queued or unacknowledged per connection before it counts as slow.
    pub outbound_queue_bytes: usize,
    /// Frames queued or unacknowledged per connection before it counts as slow.
    pub outbound_queue_frames: usize,
    /// How long a connection may stay over its queue bound before it is
    /// disconnected, in ms.
    pub slow_consumer_grace_ms: u64,
    /// Sustained sends per second per connection (0 = unlimited).
    pub send_rate_per_sec: u32,
    /// Sends a connection may burst above the rate.
    pub send_burst: u32,
    /// Time to finish the HTTP/WebSocket handshake, in ms.
    pub handshake_timeout_ms: u64,
    /// A connection silent this long is pinged, in ms.
    pub ping_interval_ms: u64,
    /// A connection silent this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// Messages each cross-shard queue holds.
    pub cross_shard_queue: usize,
    /// How long (sender, envelope id) pairs are remembered to answer a
    /// repeat `duplicate`, in ms (0 = no de-duplication).
    pub dedup_window_ms: u64,
    /// Most (sender, envelope id) pairs remembered per shard; the oldest
    /// are forgotten first.
    pub dedup_capacity: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_envelope_bytes: switchboard_protocol::limits::MAX_ENVELOPE_LEN,
            max_ttl_ms: 7 * 24 * 3600 * 1000,
            max_connections: 1_000_000,
            max_connections_per_ip: 100_000,
            max_rooms_per_connection: 64,
            outbound_queue_bytes: 4 << 20,
            outbound_queue_frames: 4096,
            slow_consumer_grace_ms: 5_000,
            send_rate_per_sec: 0,
            send_burst: 1_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            cross_shard_queue: 16_384,
            dedup_window_ms: 120_000,
            dedup_capacity: 65_536,
        }
    }
}

/// Errors reading configuration or the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The config file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// The secret is too short.
    #[error("the JWT secret from {from} is {len} bytes; HS256 needs at least {MIN_SECRET_LEN}")]
    WeakSecret {
        /// Where it came from.
        from: String,
        /// Its length.
        len: usize,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The data directory or secret file could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl LimitsConfig {
    /// The rules every client session follows.
    pub fn session(&self) -> switchboard_protocol::session::SessionConfig {
        switchboard_protocol::session::SessionConfig {
            limits: switchboard_protocol::Limits::default().with_max_envelope_len(self.max_envelope_bytes),
            max_ttl_ms: self.max_ttl_ms,
            max_rooms: self.max_rooms_per_connection,
            send_rate_per_sec: self.send_rate_per_sec,
            send_burst: self.send_burst,
            outbound_frames: self.outbound_queue_frames,
            outbound_bytes: self.outbound_queue_bytes,
            slow_consumer_grace: Duration::from_millis(self.slow_consumer_grace_ms),
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

impl Config {
    /// Reads a TOML file, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if l.max_envelope_bytes < 64 || l.max_envelope_bytes > switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING {
            return bad("limits.max_envelope_bytes must be between 64 and 16777216");
        }
        if l.cross_shard_queue == 0 || l.outbound_queue_frames == 0 || l.outbound_queue_bytes == 0 {
            return bad("limits: queue sizes must be positive");
        }
        if l.ping_interval_ms == 0 || l.idle_timeout_ms <= l.ping_interval_ms {
            return bad("limits.idle_timeout_ms must be greater than limits.ping_interval_ms > 0");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return bad("tls: set both cert_file and key_file, or neither");
        }
        if self.server.shards > 1024 {
            return bad("server.shards must be at most 1024");
        }
        Ok(())
    }

    /// The shard count: `server.shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The data directory: the file's `data_dir`, else the default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The HS256 development secret: `SWITCHBOARD_JWT_SECRET`, else
    /// `auth.jwt_secret`, else the data directory's generated secret
    /// (created on first use).
    pub fn jwt_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let (secret, from) = if let Some(s) = std::env::var_os(JWT_SECRET_ENV) {
            (s.into_encoded_bytes(), JWT_SECRET_ENV.to_owned())
        } else if let Some(s) = &self.auth.jwt_secret {
            (s.clone().into_bytes(), "auth.jwt_secret".to_owned())
        } else {
            let path = self.data_dir().join(JWT_SECRET_FILE);
            (load_or_create_secret(&path)?, path.display().to_string())
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::WeakSecret { from, len: secret.len() });
        }
        Ok(secret)
    }
}

/// `$XDG_DATA_HOME/switchboard`, else `~/.local/share/switchboard`, else
/// `./switchboard-data`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        xdg.join("switchboard")
    } else if let Some(home) = non_empty("HOME") {
        home.join(".local/share/switchboard")
    } else {
        PathBuf::from("switchboard-data")
    }
}

/// Reads the secret file, or creates it with 32 random bytes (hex, mode
/// 0600). Creation is exclusive, so two processes starting together agree
/// on one secret.
fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let err = |source| ConfigError::DataDir { path: path.into(), source };
    match fs::read(path) {
        Ok(s) => return Ok(trim_newline(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| err(e.into()))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(hex.as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
    // hard_link fails if another process created the file first; then use theirs.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(hex.into_bytes()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::read(path).map(trim_newline).map_err(err),
        Err(e) => Err(err(e)),
    }
}

fn trim_newline(mut s: Vec<u8>) -> Vec<u8> {
    while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.auth.issuer, "switchboard");
        let c: Config = toml::from_str("data_dir = \"/x\"\n[auth]\naudience = \"a\"\n").unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("/x"));
        assert_eq!(c.auth.audience, "a");
        assert!(toml::from_str::<Config>("datadir = \"/x\"").is_err());
        assert!(toml::from_str::<Config>("[auth]\nsecret = \"x\"").is_err());
    }

    #[test]
    fn secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/jwt-secret");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn weak_configured_secret_is_refused() {
        if std::env::var_os(JWT_SECRET_ENV).is_some() {
            return; // The environment overrides the file; nothing to test here.
        }
        let c = Config {
            auth: AuthConfig { jwt_secret: Some("short".into()), ..Default::default() },
            ..Default::default()
        };
        assert!(matches!(c.jwt_secret(), Err(ConfigError::WeakSecret { len: 5, .. })));
    }
}
