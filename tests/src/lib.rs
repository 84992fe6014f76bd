//! Helpers for the end-to-end tests in `tests/tests/`: finding the real
//! binaries, running them with a private data directory, and a [`Server`]
//! harness that starts `switchboard serve` on free ports and stops it by PID.
//!
//! The tests run the `switchboard` binary that Cargo built for this
//! workspace (`cargo build --bins` first; `scripts/test.sh` does), or the one
//! named by `SWITCHBOARD_BIN`. The server's I/O driver comes from
//! `SWITCHBOARD_TEST_IO_DRIVER` (`auto`, `uring` or `epoll`; default `auto`),
//! so CI runs the same tests under io_uring and under the epoll fallback.
//!
//! Nothing here sleeps to synchronise: every wait is for a condition, with a
//! deadline, and every socket read has a timeout.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard::shard::presence::Owners;
use switchboard_protocol::{Destination, EnvelopeBuilder, EnvelopeFlags, EnvelopeId, Frame, Limits, Outcome, UserId};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Environment variable choosing the server's I/O driver in tests.
pub const IO_DRIVER_ENV: &str = "SWITCHBOARD_TEST_IO_DRIVER";

/// How long any single wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path to the `switchboard` binary under test.
///
/// Panics with instructions if it has not been built: a test that cannot
/// find its binary must fail, not pass.
pub fn switchboard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHBOARD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/switchboard
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("switchboard");
    assert!(bin.exists(), "{} not found: run `cargo build --bins` first (scripts/test.sh does)", bin.display());
    bin
}

/// A `switchboard` command with its own empty data directory and no
/// inherited configuration.
pub struct Switchboard {
    data_dir: tempfile::TempDir,
}

impl Switchboard {
    /// A fresh data directory.
    pub fn new() -> Self {
        Self { data_dir: tempfile::tempdir().expect("temp dir") }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// A command for `switchboard <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(switchboard_bin());
        c.args(args)
            .env("SWITCHBOARD_DATA_DIR", self.data_dir.path())
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_CONFIG");
        c
    }

    /// Runs `switchboard <args>` with `stdin`, returning its output.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("wait for switchboard")
    }
}

impl Default for Switchboard {
    fn default() -> Self {
        Self::new()
    }
}

/// The I/O driver the tests ask for: `$SWITCHBOARD_TEST_IO_DRIVER`, default
/// `auto`. Panics on any other value, so a typo in CI does not silently
/// test the default driver.
pub fn io_driver() -> String {
    let d = std::env::var(IO_DRIVER_ENV).unwrap_or_else(|_| "auto".into());
    assert!(matches!(d.as_str(), "auto" | "uring" | "epoll"), "{IO_DRIVER_ENV}={d:?}: expected auto, uring or epoll");
    d
}

/// Options for starting a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    shards: usize,
    config: Option<String>,
    env: Vec<(String, String)>,
    listen: Option<SocketAddr>,
}

impl ServerBuilder {
    /// Number of shards (default 2, so that cross-shard paths are exercised).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// TOML configuration written to a file and passed with `--config`
    /// (small limits, short timeouts).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// The client address (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// An environment variable for the server process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the server and waits (with a deadline) for its ready line.
    pub fn start(self) -> Server {
        Server::start_with(self)
    }
}

/// A running `switchboard serve` on free loopback ports, with a private
/// data directory. Dropping it stops the process by its PID (SIGTERM, then
/// SIGKILL after a deadline); if the test is failing, the server's stderr is
/// printed.
pub struct Server {
    sb: Switchboard,
    child: Child,
    exited: Option<ExitStatus>,
    listen: SocketAddr,
    admin: SocketAddr,
    shards: usize,
    driver: String,
    secret: Vec<u8>,
    stderr_path: PathBuf,
}

impl Server {
    /// Options, defaulting to 2 shards and no config file.
    pub fn builder() -> ServerBuilder {
        ServerBuilder { shards: 2, config: None, env: Vec::new(), listen: None }
    }

    /// Starts a server with the defaults (2 shards).
    pub fn start() -> Self {
        Self::builder().start()
    }

    fn start_with(opts: ServerBuilder) -> Self {
        let sb = Switchboard::new();
        let driver = io_driver();
        let shards = opts.shards.to_string();
        let mut args: Vec<String> = Vec::new();
        if let Some(toml) = &opts.config {
            let path = sb.data_dir().join("switchboard.toml");
            std::fs::write(&path, toml).expect("write config file");
            args.extend(["--config".into(), path.display().to_string()]);
        }
        let listen = opts.listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        args.extend(
            [
                "serve",
                "--listen",
                &listen,
                "--admin-listen",
                "127.0.0.1:0",
                "--shards",
                &shards,
                "--io-driver",
                &driver,
            ]
            .map(String::from),
        );
        let stderr_path = sb.data_dir().join("server.stderr");
        let stderr = File::create(&stderr_path).expect("create stderr file");
        let mut cmd = sb.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for var in ["SWITCHBOARD_LISTEN", "SWITCHBOARD_ADMIN_LISTEN", "SWITCHBOARD_SHARDS", "SWITCHBOARD_IO_DRIVER"] {
            cmd.env_remove(var);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn switchboard serve");

        // Read stdout on a thread so the wait for the ready line has a
        // deadline; the thread keeps draining stdout until the server exits.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After the ready line nobody listens; keep draining.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["event"] == "ready"
                    {
                        break v;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("switchboard serve did not print its ready line ({e:?}); stderr:\n{log}");
                }
            }
        };
        let addr = |k: &str| -> SocketAddr {
            ready[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("ready line has no {k} address: {ready}"))
        };
        let listen = addr("listen");
        let admin = addr("admin");
        assert_eq!(ready["shards"], opts.shards, "{ready}");
        let actual = ready["driver"].as_str().unwrap_or_default().to_owned();
        match driver.as_str() {
            "uring" => assert_eq!(actual, "io_uring", "asked for uring: {ready}"),
            "epoll" => assert_eq!(actual, "epoll", "asked for epoll: {ready}"),
            _ => assert!(actual == "io_uring" || actual == "epoll", "{ready}"),
        }
        // The generated development secret (none when the config sets one).
        let secret = match std::fs::read(sb.data_dir().join("jwt-secret")) {
            Ok(hex) => String::from_utf8(hex).expect("hex secret").trim().as_bytes().to_vec(),
            Err(_) => Vec::new(),
        };
        Self { sb, child, exited: None, listen, admin, shards: opts.shards, driver: actual, secret, stderr_path }
    }

    /// The client address (WebSocket and HTTP).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `ws://<addr>/connect`.
    pub fn url(&self) -> String {
        format!("ws://{}/connect", self.listen)
    }

    /// The driver the server reported: `io_uring` or `epoll`.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.sb.data_dir()
    }

    /// The HS256 development secret the server verifies tokens with.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A valid one-hour token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(serde_json::json!({ "sub": user }))
    }

    /// A token with the default claims (`iss`, `aud`, `iat`, `exp` in one
    /// hour) overridden or extended by `claims`, signed with the server's
    /// secret.
    pub fn token_with(&self, claims: serde_json::Value) -> String {
        sign_hs256(&default_claims(claims), &self.secret)
    }

    /// The shard owning `user` (same placement as the server's).
    pub fn owner(&self, user: &str) -> usize {
        let seed = switchboard::config::Config::default().server.placement_seed;
        Owners::new(self.shards, seed).user(user).index()
    }

    /// The first room name `<prefix>-<i>` owned by `shard`.
    pub fn room_on_shard(&self, prefix: &str, shard: usize) -> String {
        let seed = switchboard::config::Config::default().server.placement_seed;
        let owners = Owners::new(self.shards, seed);
        (0..10_000)
            .map(|i| format!("{prefix}-{i}"))
            .find(|r| owners.room(r).index() == shard)
            .expect("some name lands on every shard")
    }

    /// `POST <path>` on the admin port with an empty body.
    pub fn admin_post(&self, path: &str) -> HttpResponse {
        let req = format!("POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        http_request(self.admin, req.as_bytes())
    }

    /// Kills the process (SIGKILL, a crash) and waits for it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait for the killed server");
        self.exited = Some(status);
        status
    }

    /// Waits up to `deadline` for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        while self.exited.is_none() && Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
            }
            std::thread::sleep(Duration::from_millis(10)); // polling an exit status
        }
        self.exited
    }

    /// The first name `<prefix>-<i>` owned by `shard`.
    pub fn user_on_shard(&self, prefix: &str, shard: usize) -> String {
        (0..10_000)
            .map(|i| format!("{prefix}-{i}"))
            .find(|u| self.owner(u) == shard)
            .expect("some name lands on every shard")
    }

    /// Connects the project's Rust client as `user` (read timeout [`WAIT`]).
    pub fn client(&self, user: &str) -> switchboard::client::Client {
        self.client_with_token(&self.token(user))
    }

    /// Connects the project's Rust client with `token`.
    pub fn client_with_token(&self, token: &str) -> switchboard::client::Client {
        let mut c = switchboard::client::Client::connect(&self.url(), token).expect("client connects");
        c.set_timeout(Some(WAIT)).expect("set timeout");
        c
    }

    /// A raw WebSocket as `user`, token in the `Authorization` header.
    pub fn ws(&self, user: &str) -> Ws {
        Ws::connect(&self.url(), &[("Authorization", &format!("Bearer {}", self.token(user)))])
            .unwrap_or_else(|e| panic!("ws connect as {user}: {e:?}"))
    }

    /// `GET <path>` on the admin port; returns status and body.
    pub fn admin_get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n");
        http_request(self.admin, req.as_bytes())
    }

    /// The sum over shards of the counter or gauge `switchboard_<name>`.
    pub fn metric(&self, name: &str) -> u64 {
        let r = self.admin_get("/metrics", None);
        assert_eq!(r.status, 200, "{r:?}");
        let full = format!("switchboard_{name}");
        r.body_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let metric = key.split('{').next()?;
                (metric == full).then(|| value.parse::<f64>().ok())?
            })
            .sum::<f64>() as u64
    }

    /// The admin API's view of `user`'s presence: the JSON document.
    pub fn presence(&self, user: &str) -> serde_json::Value {
        let admin = self.token_with(serde_json::json!({ "sub": "e2e-admin", "roles": ["admin"] }));
        let r = self.admin_get(&format!("/v1/users/{user}/presence"), Some(&admin));
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_slice(&r.body).expect("presence JSON")
    }

    /// Number of live connections of `user`, from the admin API.
    pub fn connections(&self, user: &str) -> usize {
        self.presence(user)["connections"].as_array().map_or(0, Vec::len)
    }

    /// Waits until `user` has `n` live connections.
    pub fn wait_connections(&self, user: &str, n: usize) {
        wait_for(&format!("{user} to have {n} connections"), || self.connections(user) == n);
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit.
    /// Returns its status, or `None` if it is still running.
    pub fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10)); // polling an exit status, not synchronising
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with the PID of our own child, which has not been
        // reaped (we hold its `Child` and only `try_wait`), so the PID still
        // names it and cannot have been reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() && self.terminate(Duration::from_secs(5)).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- switchboard serve stderr ({}, driver {}, last {} lines) ---\n{}\n--- end ---",
                self.stderr_path.display(),
                self.driver,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Waits until `cond` holds, failing after [`WAIT`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10)); // poll interval, not a synchronisation
    }
}

/// `iss`, `aud`, `iat`, `exp` (one hour) for the default server
/// configuration, overridden by the fields of `claims`.
pub fn default_claims(claims: serde_json::Value) -> serde_json::Value {
    let now = unix_secs();
    let mut all = serde_json::json!({
        "iss": "switchboard",
        "aud": "switchboard",
        "iat": now,
        "exp": now + 3600,
    });
    if let (Some(all), Some(extra)) = (all.as_object_mut(), claims.as_object()) {
        for (k, v) in extra {
            all.insert(k.clone(), v.clone());
        }
    }
    all
}

/// Signs `claims` as an HS256 JWT (no `kid`).
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign token")
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// A fresh UUIDv7 envelope id, unique within this process.
pub fn new_id() -> EnvelopeId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // UUIDv7 overwrites the high nibble of random[0] (version) and the top
    // two bits of random[2] (variant): keep the counter clear of both.
    let mut random = [0u8; 10];
    random[..2].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    random[3..].copy_from_slice(&n.to_be_bytes()[1..]);
    EnvelopeId::new_v7(unix_ms(), &random)
}

/// An envelope from `from` to `to` (`user:bob`, `room:lobby`).
pub fn envelope(from: &str, to: &str, payload: &[u8]) -> Vec<u8> {
    envelope_flags(from, to, payload, EnvelopeFlags::empty())
}

/// An envelope with flags.
pub fn envelope_flags(from: &str, to: &str, payload: &[u8], flags: EnvelopeFlags) -> Vec<u8> {
    let sender = UserId::parse(from).expect("valid sender");
    let destination = Destination::parse(to).expect("valid destination");
    EnvelopeBuilder::new(new_id(), sender, destination, unix_ms())
        .ttl_ms(60_000)
        .flags(flags)
        .content_type("application/octet-stream")
        .payload(payload)
        .build()
        .expect("valid envelope")
}

/// The id of a valid envelope.
pub fn envelope_id(envelope: &[u8]) -> EnvelopeId {
    switchboard_protocol::Envelope::parse(envelope, &Limits::default()).expect("valid envelope").id()
}

/// `01 01 00 00` + envelope.
pub fn send_frame(envelope: &[u8]) -> Vec<u8> {
    [&[1, 1, 0, 0][..], envelope].concat()
}

/// `01 03 00 00` + envelope: what a recipient must receive.
pub fn deliver_frame(envelope: &[u8]) -> Vec<u8> {
    [&[1, 3, 0, 0][..], envelope].concat()
}

/// `01 04 00 00` + `through`: acknowledges deliveries 1..=through.
pub fn ack_frame(through: u64) -> Vec<u8> {
    Frame::DeliveryAck { through }.to_vec()
}

/// An `accepted` frame's entries: (through, outcome).
pub fn parse_accepted(frame: &[u8]) -> Vec<(u64, Outcome)> {
    match Frame::decode(frame, &Limits::default()) {
        Ok(Frame::Accepted(c)) => c.iter().map(|c| (c.through, c.outcome)).collect(),
        other => panic!("expected accepted, got {other:?} ({frame:02x?})"),
    }
}

/// The outcomes of sends `first..=last` (all asking for an answer, none
/// refused), read from the `accepted` frames `next` returns: one entry may
/// answer many sends, and one frame hold many entries.
pub fn read_outcomes(first: u64, last: u64, mut next: impl FnMut() -> Vec<u8>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut answered = first - 1;
    while answered < last {
        for (through, outcome) in parse_accepted(&next()) {
            assert!(through > answered, "entry through {through} after {answered}");
            assert!(through <= last, "entry through {through} answers sends never made (last {last})");
            outcomes.extend((answered..through).map(|_| outcome));
            answered = through;
        }
    }
    outcomes
}

/// An `error` frame's fields: code, envelope id, request id, reason.
pub fn parse_error(frame: &[u8]) -> (u16, Option<EnvelopeId>, Option<u32>, String) {
    let (code, id, request, _, reason) = parse_error_sequence(frame);
    (code, id, request, reason)
}

/// An `error` frame's fields with the send sequence it answers: code,
/// envelope id, request id, sequence, reason.
pub fn parse_error_sequence(frame: &[u8]) -> (u16, Option<EnvelopeId>, Option<u32>, Option<u64>, String) {
    match Frame::decode(frame, &Limits::default()) {
        Ok(Frame::Error(e)) => (e.code, e.envelope_id, e.request_id, e.sequence, e.reason.to_owned()),
        other => panic!("expected error, got {other:?} ({frame:02x?})"),
    }
}

/// What a raw WebSocket read produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A binary message: one protocol frame.
    Frame(Vec<u8>),
    /// A text message (the server never sends one).
    Text(String),
    /// A close frame with its code (1005 when it had none) and reason.
    Close(u16, String),
    /// The connection ended without a close frame (EOF or reset).
    Gone(String),
}

/// A raw WebSocket client (tungstenite over a std `TcpStream`) for tests
/// that need close codes, text frames or hand-made bytes.
pub struct Ws {
    ws: WebSocket<TcpStream>,
}

impl Ws {
    /// Connects to `url` with extra request headers; the subprotocol
    /// `switchboard.v1` is offered unless a header sets
    /// `Sec-WebSocket-Protocol`. On refusal, returns the HTTP response.
    pub fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, Box<HttpResponse>> {
        let mut request = url.into_client_request().expect("valid URL");
        let h = request.headers_mut();
        h.insert("Sec-WebSocket-Protocol", "switchboard.v1".parse().expect("header value"));
        for (k, v) in headers {
            h.insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let uri = request.uri();
        let addr = format!("{}:{}", uri.host().expect("host"), uri.port_u16().expect("port"));
        let stream = TcpStream::connect(&addr).expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                Err(Box::new(HttpResponse {
                    status: resp.status().as_u16(),
                    headers,
                    body: resp.body().clone().unwrap_or_default(),
                }))
            }
            Err(e) => panic!("WebSocket handshake with {url} failed: {e}"),
        }
    }

    /// The socket, for writing hand-made bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }

    /// Writes raw bytes on the socket (e.g. a malformed WebSocket frame).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.ws.get_mut();
        s.write_all(bytes).expect("write raw bytes");
        s.flush().expect("flush");
    }

    /// Sends one binary message.
    pub fn send(&mut self, frame: &[u8]) {
        self.ws.send(Message::Binary(frame.to_vec().into())).expect("send binary message");
    }

    /// Sends any message; returns the error instead of panicking (writes
    /// may fail once the server has closed).
    pub fn send_message(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg)
    }

    /// The next message (pings and pongs are skipped); panics on timeout.
    pub fn read(&mut self) -> WsEvent {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => return WsEvent::Frame(b.to_vec()),
                Ok(Message::Text(t)) => return WsEvent::Text(t.to_string()),
                Ok(Message::Close(Some(f))) => return WsEvent::Close(u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return WsEvent::Close(1005, String::new()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("timed out after {WAIT:?} waiting for a WebSocket message")
                }
                Err(e) => return WsEvent::Gone(e.to_string()),
            }
        }
    }

    /// The next protocol frame; panics on anything else.
    pub fn frame(&mut self) -> Vec<u8> {
        match self.read() {
            WsEvent::Frame(f) => f,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Reads until the server's close frame and returns its code, skipping
    /// protocol frames (returned too, in order). Panics if the connection
    /// ends without a close frame.
    pub fn close_code(&mut self) -> (u16, Vec<Vec<u8>>) {
        let mut frames = Vec::new();
        loop {
            match self.read() {
                WsEvent::Frame(f) => frames.push(f),
                WsEvent::Close(code, _) => return (code, frames),
                other => panic!("expected a close frame, got {other:?} after {} frames", frames.len()),
            }
        }
    }

    /// Sends `frame` and returns the answer frame.
    pub fn request(&mut self, frame: &[u8]) -> Vec<u8> {
        self.send(frame);
        self.frame()
    }

    /// Sends an envelope and returns its id and outcome, from an
    /// `accepted` frame with one entry (this client waits for each answer,
    /// so every answer is one entry); panics on an error frame.
    pub fn send_envelope(&mut self, envelope: &[u8]) -> (EnvelopeId, Outcome) {
        match parse_accepted(&self.request(&send_frame(envelope)))[..] {
            [(_, outcome)] => (envelope_id(envelope), outcome),
            ref other => panic!("expected one accepted entry, got {other:?}"),
        }
    }
}

/// An HTTP response read to the end of the connection.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// Writes `request` to `addr` and reads the response: a `101` up to the
/// end of its head (the connection then stays open), anything else until
/// the server closes (requests must ask for `Connection: close`, or be
/// refused).
pub fn http_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("TCP connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(request).expect("write request");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if raw.starts_with(b"HTTP/1.1 101 ") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the response: {e} (after {:?})", String::from_utf8_lossy(&raw)),
        }
    }
    parse_http_response(&raw)
}

/// Parses a complete HTTP/1.1 response (head and the body that follows).
pub fn parse_http_response(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse { status, headers, body: raw[end + 4..].to_vec() }
}

/// A masked client WebSocket frame: `first` is the FIN/RSV/opcode byte.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The next frame a client receives; fails on close or timeout.
pub fn recv(c: &mut switchboard::client::Client) -> Vec<u8> {
    c.recv().expect("receive a frame").expect("connection still open")
}

/// Sends an envelope and returns its answer: the outcome of an `accepted`
/// entry through this send, or the code of an `error` naming this send's
/// sequence and the envelope's id.
pub fn send_answer(
    c: &mut switchboard::client::Client,
    env: &[u8],
) -> Result<Outcome, switchboard_protocol::ErrorCode> {
    c.send(&Frame::Send { no_answer: false, envelope: env }).expect("send");
    let frame = recv(c);
    if frame[1] == 0x05 {
        let (code, id, _, sequence, reason) = parse_error_sequence(&frame);
        assert_eq!((id, sequence), (Some(envelope_id(env)), Some(c.sends())), "error names the send: {reason}");
        return Err(switchboard_protocol::ErrorCode::from_code(code).expect("a known code"));
    }
    match parse_accepted(&frame)[..] {
        [(through, outcome)] if through == c.sends() => Ok(outcome),
        ref other => panic!("expected one entry through send {}, got {other:?}", c.sends()),
    }
}
