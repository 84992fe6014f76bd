//! End-to-end smoke tests of the load generator: short, low-rate `pairs`,
//! `fanout` and `mesh` runs, a few `idle` connections and a short `connect` storm
//! of the real `loadtest` binary against a fresh `switchboard serve`,
//! Mosquitto and nats-server (over TCP, and `pairs` and `fanout` over
//! WebSocket too; each started here on a loopback port with a
//! temp directory and stopped by PID), checking that the JSON report's
//! counts are consistent and nothing was lost. No timing assertions.
//!
//! Needs `cargo build --workspace --bins` (scripts/test.sh does) and the
//! Debian packages `mosquitto` and `nats-server`
//! (scripts/install-test-deps.sh installs them).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Messages per second over all pairs: low enough for any machine.
const RATE: u64 = 200;
const PAIRS: u64 = 4;
const SECONDS: u64 = 2;

#[test]
fn pairs_against_switchboard_loses_nothing() {
    let server = Server::switchboard();
    let url = format!("ws://{}/connect", server.addr);
    let report = loadtest(&server, "switchboard", &url, &["--data-dir", path_str(server.dir.path())]);
    check_consistent(&report);
    // Answers never outnumber sends (check_consistent saw none refused).
    assert!(report["answered"].as_u64().unwrap() <= report["sent_total"].as_u64().unwrap(), "{report}");
}

#[test]
fn pairs_against_mosquitto_loses_nothing() {
    let server = Server::mosquitto();
    let url = format!("mqtt://{}", server.addr);
    let report = loadtest(&server, "mosquitto", &url, &[]);
    check_consistent(&report);
    assert_eq!(report["answered"], 0, "MQTT QoS 0 has no answers: {report}");
}

#[test]
fn pairs_against_nats_loses_nothing() {
    let server = Server::nats();
    let url = format!("nats://{}", server.addr);
    let report = loadtest(&server, "nats", &url, &[]);
    check_consistent(&report);
}

#[test]
fn pairs_against_mosquitto_over_websocket_loses_nothing() {
    let server = Server::mosquitto_ws();
    let (url, _) = target_flags(&server, "mosquitto");
    let report = loadtest(&server, "mosquitto", &url, &[]);
    check_consistent(&report);
    assert!(report["url"].as_str().unwrap().starts_with("ws://"), "{report}");
}

#[test]
fn pairs_against_nats_over_websocket_loses_nothing() {
    let server = Server::nats_ws();
    let (url, _) = target_flags(&server, "nats");
    check_consistent(&loadtest(&server, "nats", &url, &[]));
}

/// Receivers of the fan-out smoke runs.
const RECEIVERS: u64 = 5;
/// Messages per second sent in the fan-out smoke runs.
const FANOUT_RATE: u64 = 50;

/// A one-second fan-out run at a low rate: every receiver gets every message.
fn fanout(server: &Server, target: &str, extra: &[&str]) -> Value {
    let (url, mut flags) = target_flags(server, target);
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let (k, rate) = (RECEIVERS.to_string(), FANOUT_RATE.to_string());
    let mut args = vec!["--receivers", &k, "--mode", "rate", "--rate", &rate, "--duration", "1", "--warmup", "0.3"];
    args.extend(["--drain", "10"]);
    args.extend(flags.iter().map(String::as_str));
    let r = run_json(server, "fanout", target, &url, &args);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert!(n("sent") > 0 && n("sent") <= FANOUT_RATE + 1, "{r}");
    assert_eq!(n("receivers"), RECEIVERS, "{r}");
    assert_eq!(n("expected"), n("sent") * RECEIVERS, "{r}");
    assert_eq!(n("delivered"), n("expected"), "{r}");
    for k in ["lost", "receivers_with_loss", "max_lost_per_receiver", "duplicates", "out_of_order", "unknown"] {
        assert_eq!(n(k), 0, "{k}: {r}");
    }
    for k in ["rejected", "disconnects"] {
        assert_eq!(n(k), 0, "{k}: {r}");
    }
    assert!(n("received_total") >= n("delivered") && n("received_total") <= n("sent_total") * RECEIVERS, "{r}");
    assert_eq!(r["latency_us"]["samples"].as_u64(), Some(n("delivered")), "{r}");
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["workload"], "fanout", "{r}");
    r
}

#[test]
fn fanout_against_switchboard_reaches_every_receiver() {
    let server = Server::switchboard();
    let html = server.dir.path().join("fanout.html");
    let r = fanout(&server, "switchboard", &["--report", path_str(&html)]);
    // Every send is answered once the room has it.
    assert_eq!(r["answered"], r["sent_total"], "{r}");
    let page = std::fs::read_to_string(&html).expect("--report wrote the page");
    assert!(page.contains("<svg") && page.contains("<polyline") && !page.contains("<script"), "{page}");
}

#[test]
fn fanout_against_mosquitto_reaches_every_receiver() {
    let server = Server::mosquitto();
    fanout(&server, "mosquitto", &[]);
}

#[test]
fn fanout_against_mosquitto_over_websocket_reaches_every_receiver() {
    fanout(&Server::mosquitto_ws(), "mosquitto", &[]);
}

#[test]
fn fanout_against_nats_over_websocket_reaches_every_receiver() {
    fanout(&Server::nats_ws(), "nats", &[]);
}

#[test]
fn fanout_against_nats_reaches_every_receiver() {
    let server = Server::nats();
    fanout(&server, "nats", &[]);
}

/// Users of the mesh smoke runs.
const USERS: u64 = 5;
/// Messages per second over all users in the mesh smoke runs.
const MESH_RATE: u64 = 100;

/// A one-second mesh run at a low rate: every message reaches its one
/// random receiver, once and in order per stream.
fn mesh(server: &Server, target: &str) -> Value {
    let (url, flags) = target_flags(server, target);
    let (users, rate) = (USERS.to_string(), MESH_RATE.to_string());
    let mut args = vec!["--users", &users, "--seed", "7", "--mode", "rate", "--rate", &rate, "--duration", "1"];
    args.extend(["--warmup", "0.3", "--drain", "10"]);
    args.extend(flags.iter().map(String::as_str));
    let r = run_json(server, "mesh", target, &url, &args);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert_eq!((r["workload"].as_str(), n("users"), n("seed")), (Some("mesh"), USERS, 7), "{r}");
    assert!(n("sent") > 0 && n("sent") <= MESH_RATE + USERS, "{r}");
    assert_eq!(n("delivered"), n("sent"), "{r}");
    for k in ["lost", "duplicates", "out_of_order", "unknown", "rejected", "offline", "disconnects"] {
        assert_eq!(n(k), 0, "{k}: {r}");
    }
    assert!(n("sent_total") >= n("sent"), "{r}");
    assert!(n("received_total") >= n("delivered") && n("received_total") <= n("sent_total"), "{r}");
    assert_eq!(r["latency_us"]["samples"].as_u64(), Some(n("delivered")), "{r}");
    assert_eq!(r["complete"], true, "{r}");
    r
}

#[test]
fn mesh_against_switchboard_loses_nothing() {
    let server = Server::switchboard();
    let r = mesh(&server, "switchboard");
    assert!(r["answered"].as_u64() <= r["sent_total"].as_u64(), "{r}");
}

#[test]
fn mesh_against_mosquitto_loses_nothing() {
    let server = Server::mosquitto();
    let r = mesh(&server, "mosquitto");
    assert_eq!(r["answered"], 0, "MQTT QoS 0 has no answers: {r}");
}

/// Opens a few idle connections and checks the memory report.
fn idle(server: &Server, target: &str) -> Value {
    let (url, flags) = target_flags(server, target);
    let mut args = vec!["--connections", "50", "--settle", "0.2", "--threads", "2"];
    args.extend(flags.iter().map(String::as_str));
    let r = run_json(server, "idle", target, &url, &args);
    assert_eq!((r["requested"].as_u64(), r["connections"].as_u64()), (Some(50), Some(50)), "{r}");
    assert_eq!(r["open"], 50, "every connection is still open: {r}");
    let kib = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert!(kib("rss_before_kib") > 0 && kib("rss_after_kib") > 0, "{r}");
    let per = r["bytes_per_connection"].as_f64().expect("bytes_per_connection");
    let growth = (kib("rss_after_kib") as f64 - kib("rss_before_kib") as f64) * 1024.0;
    assert!((per * 50.0 - growth).abs() < 1.0, "{r}");
    r
}

#[test]
fn idle_against_switchboard_reports_memory_per_connection() {
    idle(&Server::switchboard(), "switchboard");
}

#[test]
fn idle_against_mosquitto_reports_memory_per_connection() {
    idle(&Server::mosquitto(), "mosquitto");
}

#[test]
fn idle_against_nats_reports_memory_per_connection() {
    idle(&Server::nats(), "nats");
}

/// A short reconnect storm: handshakes complete and none fails.
fn connect(server: &Server, target: &str) -> Value {
    let (url, flags) = target_flags(server, target);
    let mut args = vec!["--concurrency", "2", "--duration", "0.5", "--warmup", "0.1"];
    args.extend(flags.iter().map(String::as_str));
    let r = run_json(server, "connect", target, &url, &args);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert!(n("connects") > 0, "{r}");
    assert_eq!(n("failures"), 0, "{r}");
    assert!(r["first_error"].is_null(), "{r}");
    assert_eq!(r["handshake_latency_us"]["samples"].as_u64(), Some(n("connects")), "{r}");
    assert!(r["cpu_server_pct"].is_number(), "--server-pid was given: {r}");
    r
}

#[test]
fn connect_against_switchboard_completes_handshakes() {
    connect(&Server::switchboard(), "switchboard");
}

#[test]
fn connect_against_mosquitto_completes_handshakes() {
    connect(&Server::mosquitto(), "mosquitto");
}

#[test]
fn connect_against_nats_completes_handshakes() {
    connect(&Server::nats(), "nats");
}

#[test]
fn idle_needs_the_server_pid() {
    let out = Command::new(bin("loadtest"))
        .args(["idle", "--target", "nats", "--url", "nats://127.0.0.1:1", "--connections", "1"])
        .output()
        .expect("run loadtest");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--server-pid"), "{err}");
}

#[test]
fn idle_stops_opening_at_its_time_bound() {
    // A bound of 0 s opens nothing, which is an error (nothing to measure).
    let server = Server::nats();
    let pid = server.child.id().to_string();
    let url = format!("nats://{}", server.addr);
    let out = Command::new(bin("loadtest"))
        .args(["idle", "--target", "nats", "--url", &url, "--connections", "10", "--server-pid", &pid])
        .args(["--max-connect-time", "0"])
        .output()
        .expect("run loadtest");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connection opened within --max-connect-time"), "{err}");
}

#[test]
fn non_loopback_targets_are_refused_before_connecting() {
    let out = Command::new(bin("loadtest"))
        .args(["pairs", "--target", "nats", "--url", "nats://192.0.2.1:4222", "--duration", "1"])
        .output()
        .expect("run loadtest");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only targets loopback"), "{err}");
}

/// The report of a low-rate run is self-consistent and lossless.
fn check_consistent(r: &Value) {
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert!(n("sent") > 0, "{r}");
    // The open-loop schedule bounds what can be sent in the window.
    assert!(n("sent") <= RATE * SECONDS + PAIRS, "{r}");
    assert_eq!(n("delivered"), n("sent"), "{r}");
    for k in ["lost", "duplicates", "out_of_order", "unknown", "rejected", "offline", "disconnects"] {
        assert_eq!(n(k), 0, "{k}: {r}");
    }
    assert!(n("sent_total") >= n("sent"), "{r}");
    assert!(n("received_total") >= n("delivered") && n("received_total") <= n("sent_total"), "{r}");
    assert_eq!(r["latency_us"]["samples"].as_u64(), Some(n("delivered")), "{r}");
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["pairs"], PAIRS, "{r}");
    assert_eq!(r["message_bytes"], 256, "{r}");
    assert!(r["cpu_generator_pct"].is_number(), "{r}");
    assert!(r["cpu_server_pct"].is_number(), "--server-pid was given: {r}");
}

/// Runs `loadtest pairs --json` in rate mode and returns its report.
fn loadtest(server: &Server, target: &str, url: &str, extra: &[&str]) -> Value {
    let (rate, pairs, seconds) = (RATE.to_string(), PAIRS.to_string(), SECONDS.to_string());
    let mut args = vec![
        "--pairs",
        &pairs,
        "--mode",
        "rate",
        "--rate",
        &rate,
        "--duration",
        &seconds,
        "--warmup",
        "0.5",
        "--drain",
        "10",
    ];
    args.extend_from_slice(extra);
    run_json(server, "pairs", target, url, &args)
}

/// The `--url` and extra flags of `server` as a `target`.
fn target_flags(server: &Server, target: &str) -> (String, Vec<String>) {
    match target {
        "switchboard" => (
            format!("ws://{}/connect", server.addr),
            vec!["--data-dir".to_owned(), path_str(server.dir.path()).to_owned()],
        ),
        "mosquitto" if server.websocket => (format!("ws://{}/mqtt", server.addr), Vec::new()),
        "mosquitto" => (format!("mqtt://{}", server.addr), Vec::new()),
        _ if server.websocket => (format!("ws://{}", server.addr), Vec::new()),
        _ => (format!("nats://{}", server.addr), Vec::new()),
    }
}

/// Runs `loadtest <workload> --json` against `server` with `--server-pid`
/// and returns its report.
fn run_json(server: &Server, workload: &str, target: &str, url: &str, extra: &[&str]) -> Value {
    let pid = server.child.id().to_string();
    let mut args = vec![workload, "--target", target, "--url", url, "--server-pid", &pid, "--json"];
    args.extend_from_slice(extra);
    let mut child = Command::new(bin("loadtest"))
        .args(&args)
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env_remove("SWITCHBOARD_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadtest");
    // The run is bounded by its own flags; this deadline catches a hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for loadtest").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadtest did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("loadtest output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A server process on a loopback port, with its own temp directory;
/// killed by PID when dropped.
struct Server {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    /// A peer listening for its protocol over WebSocket.
    websocket: bool,
}

impl Server {
    fn switchboard() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(bin("switchboard"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shards", "1"]);
        if let Ok(driver) = std::env::var("SWITCHBOARD_TEST_IO_DRIVER") {
            cmd.args(["--io-driver", &driver]);
        }
        for var in ["SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_CONFIG", "SWITCHBOARD_LISTEN", "SWITCHBOARD_IO_DRIVER"] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .env("SWITCHBOARD_DATA_DIR", dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchboard serve");
        // Read the ready line on a thread so the wait has a deadline.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Self { child, addr: String::new(), dir, websocket: false };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("switchboard serve printed no ready line within 20 s");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "ready"
            {
                server.addr = v["listen"].as_str().expect("ready line names its listen address").to_owned();
            }
        }
        server
    }

    fn mosquitto() -> Self {
        Self::mosquitto_with(false)
    }

    /// Mosquitto with a `protocol websockets` listener (2.0.11 also needs a
    /// plain one to start).
    fn mosquitto_ws() -> Self {
        Self::mosquitto_with(true)
    }

    fn mosquitto_with(websocket: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let listener = if websocket {
            format!("listener {} 127.0.0.1\nlistener {port} 127.0.0.1\nprotocol websockets\n", free_port())
        } else {
            format!("listener {port} 127.0.0.1\n")
        };
        std::fs::write(
            &conf,
            format!("{listener}allow_anonymous true\npersistence false\nset_tcp_nodelay true\nlog_dest none\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(system_bin("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        Self::listening(child, port, dir, websocket)
    }

    fn nats() -> Self {
        Self::nats_with(false)
    }

    /// nats-server with a `websocket` listener (no TLS, loopback).
    fn nats_ws() -> Self {
        Self::nats_with(true)
    }

    fn nats_with(websocket: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut cmd = Command::new(system_bin("nats-server"));
        if websocket {
            let conf = dir.path().join("nats.conf");
            std::fs::write(&conf, format!("websocket {{ listen: \"127.0.0.1:{port}\", no_tls: true }}\n"))
                .expect("write nats.conf");
            cmd.args(["-a", "127.0.0.1", "-p", &free_port().to_string(), "-c", path_str(&conf)]);
        } else {
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        }
        let child =
            cmd.current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn nats-server");
        Self::listening(child, port, dir, websocket)
    }

    /// Waits (with a deadline) until the server accepts connections.
    fn listening(child: Child, port: u16, dir: tempfile::TempDir, websocket: bool) -> Self {
        let mut server = Self { child, addr: format!("127.0.0.1:{port}"), dir, websocket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&server.addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited before listening on {}: {status}", server.addr);
            }
            assert!(Instant::now() < deadline, "nothing listens on {} after 20 s", server.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill signals our own child by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// A binary of this workspace: target/<profile>/<name>, next to the test
/// binary's `deps/` directory.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A Debian-packaged server binary (in /usr/sbin, often not on PATH).
fn system_bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/install-test-deps.sh (Debian package {name})"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
