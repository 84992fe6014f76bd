//! The fault suite: what happens to a running server when parts of it or
//! its clients misbehave, each checked from the outside (what clients
//! receive, the admin port, the exit status).
//!
//! Faults inside the server (a shard stuck, a shard panicking) are injected
//! through the admin API of debug builds started with
//! `SWITCHBOARD_FAULT_INJECTION=1` (`POST /debug/fault`).

use std::time::{Duration, Instant};

use switchboard::client::Client;
use switchboard_e2e::*;
use switchboard_protocol::{ErrorCode, Frame, Limits, Outcome, RoomName};

fn faulty(config: &str) -> Server {
    Server::builder().env("SWITCHBOARD_FAULT_INJECTION", "1").config(config).start()
}

fn join(c: &mut Client, room: &str) {
    c.send(&Frame::JoinRoom { request_id: 1, room: RoomName::parse(room).expect("room name") }).expect("send join");
    match Frame::decode(&recv(c), &Limits::default()) {
        Ok(Frame::Done { request_id: 1 }) => {}
        other => panic!("join {room}: expected done, got {other:?}"),
    }
}

#[test]
fn a_stalled_shard_is_not_ready_and_the_backlog_to_it_is_bounded() {
    // Room fan-out from shard 0 to a member on shard 1 while shard 1 is
    // stuck: the mesh queue (8) and then the backlog (bounded by the same
    // 8) fill, and later room sends are refused with `overloaded` instead
    // of queueing without limit. /readyz names the stuck shard. When it
    // runs again, the member receives exactly the sends answered
    // `delivered`, in order.
    let s = faulty("[limits]\ncross_shard_queue = 8\n");
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let room = s.room_on_shard("lobby", 0);
    let mut a = s.client(&alice);
    let mut b = s.client(&bob);
    join(&mut b, &room);
    assert_eq!(s.admin_get("/readyz", None).status, 200);

    let stall = Duration::from_millis(3500);
    let r = s.admin_post(&format!("/debug/fault?shard=1&kind=stall&ms={}", stall.as_millis()));
    assert_eq!(r.status, 202, "{r:?}");
    let stalled_at = Instant::now();
    wait_for("/readyz to report the stalled shard", || {
        let r = s.admin_get("/readyz", None);
        r.status == 503 && r.body_text().contains("[1]")
    });

    let mut delivered = Vec::new();
    let mut overloaded = 0;
    for i in 0..200 {
        let env = envelope(&alice, &format!("room:{room}"), format!("fan-out {i}").as_bytes());
        match send_answer(&mut a, &env) {
            Ok(Outcome::Delivered) => delivered.push(env),
            Err(ErrorCode::Overloaded) => overloaded += 1,
            other => panic!("room send {i}: {other:?}"),
        }
    }
    assert!(stalled_at.elapsed() < stall, "the sends outlasted the stall; the test proves nothing");
    assert!(overloaded > 0, "200 room sends to a stuck shard were all accepted: the backlog is unbounded");
    assert!(delivered.len() <= 64, "{} accepted past a queue of 8 and a backlog of 8", delivered.len());

    wait_for("/readyz to be ready again", || s.admin_get("/readyz", None).status == 200);
    for (i, env) in delivered.iter().enumerate() {
        assert!(recv(&mut b) == deliver_frame(env), "bob's delivery {i}");
    }
    b.ack().expect("ack");
    // Nothing else was delivered, and the path works again.
    let env = envelope(&alice, &format!("room:{room}"), b"after the stall");
    assert_eq!(send_answer(&mut a, &env), Ok(Outcome::Delivered));
    assert!(recv(&mut b) == deliver_frame(&env), "the first delivery after the stall");
}

#[test]
fn a_panicking_shard_stops_the_process_with_status_70() {
    // A shard thread that panics would leave its connections, rooms and
    // hand-offs hanging while the other shards and /readyz looked fine.
    // The server logs the panic and exits 70 for its supervisor to restart.
    let mut s = faulty("");
    let alice = s.user_on_shard("alice", 0);
    let _a = s.client(&alice);
    let r = s.admin_post("/debug/fault?shard=1&kind=panic");
    assert_eq!(r.status, 202, "{r:?}");
    let status = s.wait_exit(Duration::from_secs(10)).expect("the process exits after a shard panic");
    assert_eq!(status.code(), Some(70), "exit status {status}");
    let log = s.stderr();
    assert!(log.contains("thread panicked; exiting with status 70"), "no log line: {log}");
    assert!(log.contains("shard-1"), "the log names the thread: {log}");
}

#[test]
fn fault_injection_is_off_unless_asked_for() {
    let s = Server::start();
    let r = s.admin_post("/debug/fault?shard=1&kind=panic");
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(s.admin_get("/readyz", None).status, 200);
}

#[test]
fn shutdown_waits_the_grace_period_for_a_client_that_reads_late() {
    // Bob stops reading while ~4 MiB of deliveries (answered `delivered`)
    // wait for him, more than the socket buffers hold. On SIGTERM the
    // server keeps writing for up to shutdown_grace_ms (5 s): when he
    // reads again after 3 s he gets every delivered envelope, in order,
    // then `shutting-down` and close 1001, and the process exits 0 before
    // the grace period ends. (It used to shut his socket after 2 s,
    // dropping what was still queued, with no close frame.)
    let grace = Duration::from_secs(5);
    let mut s = Server::builder()
        .config(&format!(
            "[server]\nshutdown_grace_ms = {}\n[limits]\nslow_consumer_grace_ms = 60000\n",
            grace.as_millis()
        ))
        .start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let mut a = s.client(&alice);
    let mut b = s.ws(&bob);
    s.wait_connections(&bob, 1);
    let mut delivered = Vec::new();
    for i in 0..700 {
        let env = envelope(&alice, &format!("user:{bob}"), &vec![i as u8; 8 * 1024]);
        match send_answer(&mut a, &env) {
            Ok(Outcome::Delivered) => delivered.push(env),
            Err(ErrorCode::RecipientBusy) => {}
            other => panic!("send {i}: {other:?}"),
        }
    }
    assert!(delivered.len() > 300, "only {} delivered", delivered.len());
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        b.close_code()
    });
    let start = Instant::now();
    let status = s.terminate(grace + Duration::from_secs(3)).expect("server exits after SIGTERM");
    let took = start.elapsed();
    let (code, mut frames) = reader.join().expect("bob read to the close frame");
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_secs(3) && took < grace, "exited after {took:?}");
    assert_eq!(code, 1001, "bob's close code");
    let error = frames.pop().expect("the error frame before the close");
    assert_eq!(parse_error(&error).0, ErrorCode::ShuttingDown.code());
    assert_eq!(frames.len(), delivered.len(), "delivered envelopes lost in shutdown");
    for (i, (f, env)) in frames.iter().zip(&delivered).enumerate() {
        assert!(*f == deliver_frame(env), "delivery {i}");
    }
}

/// A free loopback port (bound, read and released).
fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

#[test]
fn a_connection_storm_the_moment_a_restarted_server_opens_its_port() {
    // What every client of a restarted server does: retry until the port
    // accepts, then connect at once. Five starts on the same port, each
    // met by 200 WebSocket connections opened the moment the port answers:
    // every one must be upgraded (none reset or refused), whether the last
    // server stopped on SIGTERM or was killed.
    const SECRET: &str = "0123456789abcdef0123456789abcdef-storm";
    let config = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    let addr = free_port();
    let url = format!("ws://{addr}/connect");
    for round in 0..5 {
        let token =
            sign_hs256(&default_claims(serde_json::json!({ "sub": format!("storm-{round}") })), SECRET.as_bytes());
        let url = url.clone();
        let mut server = None;
        if round % 2 == 0 && round > 0 {
            // After a kill under io_uring the dead process's listener
            // lingers until the kernel tears its ring down, and takes
            // connections it then resets: a crash's reset, not the new
            // server's. The new server waits for that listener to go
            // before it listens; the storm meets it once it is ready.
            server = Some(Server::builder().listen(addr).config(&config).start());
        }
        let storm = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < end, "the port never opened");
                std::thread::sleep(Duration::from_micros(200)); // retry interval of a reconnecting client
            }
            let mut open = Vec::new();
            let mut failures = Vec::new();
            for i in 0..200 {
                let connect = || Ws::connect(&url, &[("Authorization", &format!("Bearer {token}"))]);
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(connect)) {
                    Ok(Ok(ws)) => open.push(ws),
                    Ok(Err(e)) => failures.push(format!("connection {i}: {e:?}")),
                    Err(_) => failures.push(format!("connection {i}: I/O error (above)")),
                }
            }
            (open.len(), failures)
        });
        let mut s = server.unwrap_or_else(|| Server::builder().listen(addr).config(&config).start());
        let (open, failures) = storm.join().expect("storm thread");
        assert!(failures.is_empty(), "round {round}: {open} upgraded, failed: {failures:?}");
        // Stopped gracefully, or killed (a crash) every other round.
        if round % 2 == 0 {
            let status = s.terminate(Duration::from_secs(10)).expect("exits");
            assert!(status.success(), "round {round}: exit status {status}");
        } else {
            s.kill();
        }
    }
}

#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    // Every listener of one user with SO_REUSEPORT on a port shares its
    // connections: a second server started on a busy port by mistake (or
    // while a killed one's listener lingers) would silently take part of
    // the first one's clients. It waits for the port (5 s), then fails.
    let s = Server::start();
    let listen = s.addr().to_string();
    let sb = Switchboard::new();
    let log = sb.data_dir().join("second.stderr");
    let mut second = sb
        .command(&["serve", "--listen", &listen, "--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn a second server");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server is running on {listen}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20)); // polling an exit status
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("another process listens on it"), "{stderr}");
    assert!(start.elapsed() >= Duration::from_secs(4), "it did not wait for the port: {:?}", start.elapsed());
    // The first one still serves.
    let mut c = s.client(&s.user_on_shard("alice", 0));
    c.send(&Frame::Ping { nonce: 7 }).expect("ping");
    assert!(matches!(Frame::decode(&recv(&mut c), &Limits::default()), Ok(Frame::Pong { nonce: 7 })));
}

/// The soft open-files limit of this process (the server inherits it).
fn nofile_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

#[test]
fn a_reconnect_storm_up_to_the_fd_limit_leaves_nothing_behind() {
    // As many connections as the open-files limit allows (capped to keep
    // the suite fast), opened from four threads at once, dropped without a
    // close handshake, and opened again: no failure, and the connections
    // gauge back to 0 each time.
    let n = nofile_limit().saturating_sub(300).min(4000);
    assert!(n >= 500, "open-files limit too low for this test: {}", nofile_limit());
    let s = Server::start();
    let users: Vec<String> = (0..4).map(|i| s.user_on_shard(&format!("storm{i}"), i % 2)).collect();
    for round in 0..2 {
        let threads: Vec<_> = users
            .iter()
            .map(|user| {
                let url = s.url();
                let auth = format!("Bearer {}", s.token(user));
                std::thread::spawn(move || {
                    let mut open = Vec::new();
                    let mut failures = 0;
                    for _ in 0..n / 4 {
                        match Ws::connect(&url, &[("Authorization", &auth)]) {
                            Ok(ws) => open.push(ws),
                            Err(_) => failures += 1,
                        }
                    }
                    (open, failures)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let (open, failures) = t.join().expect("storm thread");
            assert_eq!(failures, 0, "round {round}: refused connections");
            all.extend(open);
        }
        wait_for(&format!("{} connections", all.len()), || s.metric("connections") == all.len() as u64);
        drop(all);
        wait_for("the connections gauge back to 0", || s.metric("connections") == 0);
    }
    // Still serving.
    let mut c = s.client(&users[0]);
    c.send(&Frame::Ping { nonce: 1 }).expect("ping");
    assert!(matches!(Frame::decode(&recv(&mut c), &Limits::default()), Ok(Frame::Pong { nonce: 1 })));
}

/// Sends `envs` with up to `window` in flight and returns, per envelope
/// index, its outcome (`None` if unanswered when the connection ended).
fn pipeline(c: &mut Client, envs: &[Vec<u8>], window: usize, mut after: impl FnMut(usize)) -> Vec<Option<Outcome>> {
    let first = c.sends() + 1;
    let mut outcomes = vec![None; envs.len()];
    let mut sent = 0;
    let mut answered = 0;
    while answered < envs.len() {
        while sent < envs.len() && sent - answered < window {
            if c.send(&Frame::Send { no_answer: false, envelope: &envs[sent] }).is_err() {
                return outcomes;
            }
            sent += 1;
        }
        let frame = match c.recv() {
            Ok(Some(f)) => f,
            _ => return outcomes,
        };
        match Frame::decode(&frame, &Limits::default()) {
            Ok(Frame::Accepted(entries)) => {
                for e in entries.iter() {
                    let through = (e.through - first) as usize;
                    for o in &mut outcomes[answered..=through] {
                        *o = Some(e.outcome);
                    }
                    answered = through + 1;
                }
            }
            Ok(Frame::Error(e)) if e.sequence.is_some() => {
                answered = (e.sequence.unwrap() - first) as usize + 1;
            }
            Ok(Frame::Error(_)) => return outcomes, // shutting down: the close follows
            other => panic!("unexpected frame {other:?}"),
        }
        after(answered);
    }
    outcomes
}

/// Reads deliveries until the connection ends, acknowledging each batch;
/// returns the envelope ids received, in order.
fn receive_all(mut c: Client) -> Vec<switchboard_protocol::EnvelopeId> {
    let mut ids = Vec::new();
    while let Ok(Some(frame)) = c.recv() {
        if let Ok(Frame::Deliver { envelope, .. }) = Frame::decode(&frame, &Limits::default()) {
            ids.push(envelope_id(envelope));
            // Once the server has closed its side, an ack can fail while
            // deliveries are still there to read: keep reading.
            let _ = c.ack();
        }
    }
    ids
}

#[test]
fn sigterm_under_load_loses_nothing_answered_delivered() {
    let mut s = Server::builder().config("[server]\nshutdown_grace_ms = 5000\n").start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let mut a = s.client(&alice);
    let b = s.client(&bob);
    s.wait_connections(&bob, 1);
    let receiver = std::thread::spawn(move || receive_all(b));
    let envs: Vec<Vec<u8>> = (0..20_000).map(|i| envelope(&alice, &format!("user:{bob}"), &[i as u8; 200])).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        let mut signalled = false;
        pipeline(&mut a, &envs, 32, |answered| {
            if answered >= 2_000 && !signalled {
                signalled = true;
                let _ = tx.send(());
            }
        })
        .into_iter()
        .zip(envs)
        .filter(|(o, _)| *o == Some(Outcome::Delivered))
        .map(|(_, e)| envelope_id(&e))
        .collect::<Vec<_>>()
    });
    rx.recv_timeout(WAIT).expect("2,000 answers before the signal");
    let start = Instant::now();
    let status = s.terminate(Duration::from_secs(8)).expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // Both clients read to their close: nothing to wait for.
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown took {:?}", start.elapsed());
    let delivered = sender.join().expect("sender");
    let received = receiver.join().expect("receiver");
    assert!(delivered.len() >= 2_000, "{} answered delivered", delivered.len());
    let got: std::collections::HashSet<_> = received.iter().collect();
    let lost = delivered.iter().filter(|id| !got.contains(id)).count();
    assert_eq!(lost, 0, "{lost} of {} envelopes answered delivered never arrived", delivered.len());
}

#[test]
fn after_kill_9_unanswered_sends_resent_with_the_same_id_arrive_once() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-kill9";
    let config = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    let addr = free_port();
    let mut s = Server::builder().listen(addr).config(&config).start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let url = s.url();
    let token = |u: &str| sign_hs256(&default_claims(serde_json::json!({ "sub": u })), SECRET.as_bytes());
    let connect = |u: &str| {
        let mut c = Client::connect(&url, &token(u)).expect("connect");
        c.set_timeout(Some(WAIT)).expect("timeout");
        c
    };
    let b = connect(&bob);
    wait_for("bob connected", || s.metric("connections") == 1);
    let receiver = std::thread::spawn(move || receive_all(b));
    let envs: Vec<Vec<u8>> = (0..20_000).map(|i| envelope(&alice, &format!("user:{bob}"), &[i as u8; 200])).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = {
        let envs = envs.clone();
        let mut a = connect(&alice);
        std::thread::spawn(move || {
            let mut signalled = false;
            pipeline(&mut a, &envs, 32, |answered| {
                if answered >= 2_000 && !signalled {
                    signalled = true;
                    let _ = tx.send(());
                }
            })
        })
    };
    rx.recv_timeout(WAIT).expect("2,000 answers before the kill");
    s.kill();
    let outcomes = sender.join().expect("sender");
    let _ = receiver.join().expect("receiver");
    let unanswered: Vec<Vec<u8>> =
        outcomes.iter().zip(&envs).filter(|(o, _)| o.is_none()).map(|(_, e)| e.clone()).collect();
    assert!(!unanswered.is_empty(), "every send was answered before the kill");

    // A new server on the same port; both clients reconnect and alice
    // resends what was not answered, twice (the second time as if the
    // first answers had been lost too).
    let s2 = Server::builder().listen(addr).config(&config).start();
    let b = connect(&bob);
    wait_for("bob connected again", || s2.metric("connections") == 1);
    let receiver = std::thread::spawn(move || receive_all(b));
    let mut a = connect(&alice);
    let first = pipeline(&mut a, &unanswered, 32, |_| {});
    assert!(first.iter().all(|o| *o == Some(Outcome::Delivered)), "resends: {:?}", &first[..first.len().min(8)]);
    let again = pipeline(&mut a, &unanswered, 32, |_| {});
    assert!(again.iter().all(|o| *o == Some(Outcome::Duplicate)), "second resends: {:?}", &again[..again.len().min(8)]);
    // Bob got each resent id exactly once from the new server.
    drop(s2);
    let received = receiver.join().expect("receiver");
    let mut counts = std::collections::HashMap::new();
    for id in received {
        *counts.entry(id).or_insert(0) += 1;
    }
    for env in &unanswered {
        assert_eq!(counts.get(&envelope_id(env)), Some(&1), "a resent envelope arrived other than once");
    }
}

/// The server's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn slow_consumers_are_closed_and_cost_bounded_memory() {
    // Twenty receivers that never read, each offered 1.6 MB of 8 KB
    // envelopes against a 256 KiB bound: the server holds at most the
    // bound per receiver, closes each with slow-consumer (4402), and an
    // unrelated pair keeps exchanging envelopes meanwhile.
    let s = Server::builder().config("[limits]\noutbound_queue_bytes = 262144\nslow_consumer_grace_ms = 500\n").start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let carol = s.user_on_shard("carol", 0);
    let mut a = s.client(&alice);
    let mut b = s.client(&bob);
    let mut c = s.client(&carol);
    let sloths: Vec<String> = (0..20).map(|i| s.user_on_shard(&format!("sloth{i}"), i % 2)).collect();
    let mut held: Vec<Ws> = sloths.iter().map(|u| s.ws(u)).collect();
    wait_for("everyone connected", || s.metric("connections") == 23);
    let before = rss_bytes(s.pid());
    for round in 0..200 {
        for sloth in &sloths {
            let env = envelope(&alice, &format!("user:{sloth}"), &[round as u8; 8 * 1024]);
            match send_answer(&mut a, &env) {
                Ok(Outcome::Delivered | Outcome::RecipientOffline) | Err(ErrorCode::RecipientBusy) => {}
                other => panic!("send to {sloth}: {other:?}"),
            }
        }
        // The unrelated pair is served throughout.
        let env = envelope(&carol, &format!("user:{bob}"), format!("round {round}").as_bytes());
        assert_eq!(send_answer(&mut c, &env), Ok(Outcome::Delivered), "round {round}");
        assert!(recv(&mut b) == deliver_frame(&env), "bob's delivery in round {round}");
        b.ack().expect("ack");
    }
    let growth = rss_bytes(s.pid()).saturating_sub(before);
    assert!(growth < 32 << 20, "server grew {growth} bytes holding 20 bounded queues of 256 KiB");
    wait_for("every sloth closed as slow", || s.metric("slow_consumer_disconnects_total") >= 20);
    for (sloth, ws) in sloths.iter().zip(&mut held) {
        let (code, _) = ws.close_code();
        assert_eq!(code, ErrorCode::SlowConsumer.close_code(), "{sloth}");
    }
}
