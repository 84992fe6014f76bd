//! `switchboard serve`: starts the shards, the admin server and the signal
//! handler, and runs until SIGTERM or SIGINT.
//!
//! Start-up binds every listener before any shard runs, so a bad address
//! fails fast; one line of JSON on stdout announces readiness with the bound
//! addresses (tests and scripts read it). Shutdown tells every shard to stop
//! accepting and close its connections with `shutting-down`, waits for the
//! queues to flush within `server.shutdown_grace_ms`, and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::auth::Verifier;
use crate::config::{Config, IoDriver};
use crate::shard::{Command, Msg, Shard, ShardId, Shared, handshake, ws_io};

/// Runs the server until a termination signal.
pub fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    exit_on_panic();
    let shards = config.shard_count();
    let dev_secret = config.jwt_secret()?;
    let verifier = Verifier::from_config(&config.auth, Some(&dev_secret)).context("auth configuration")?;
    let listen = config.server.listen;
    let admin_addr = config.server.admin_listen;
    let driver = config.io.driver;
    let pin = config.server.pin_cores;
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let tls = crate::tls::server_config(&config.tls)?;
    let tls_on = tls.is_some();
    let shared = Shared::new(config, verifier, tls, shards);

    // Bind everything first. The first listener resolves port 0; the other
    // shards bind the same address with SO_REUSEPORT, so the kernel spreads
    // new connections across shards.
    wait_for_port(listen)?;
    let first = bind_reuseport(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let client_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_reuseport(client_addr).with_context(|| format!("cannot listen on {client_addr}"))?);
    }
    let admin = std::net::TcpListener::bind(admin_addr).with_context(|| format!("cannot listen on {admin_addr}"))?;
    let admin_addr = admin.local_addr()?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new().name(format!("shard-{i}")).spawn(move || {
            if pin && let Err(e) = monoio::utils::bind_to_cpu_set([i % cores]) {
                tracing::warn!(shard = i, error = ?e, "cannot pin shard to a core");
            }
            run_shard(shared, ShardId(i as u16), listener, driver, grace, ready);
        })?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut drivers = Vec::new();
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(d)) => drivers.push(d),
            Ok(Err(e)) => bail!("a shard failed to start: {e}"),
            Err(_) => bail!("a shard exited during start-up"),
        }
    }
    let driver_name = if drivers.iter().all(|d| *d == "io_uring") { "io_uring" } else { "epoll" };
    tracing::info!(%client_addr, %admin_addr, shards, driver = driver_name, "switchboard ready");
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "listen": client_addr.to_string(),
            "admin": admin_addr.to_string(),
            "shards": shards,
            "driver": driver_name,
            "tls": tls_on,
        })
    );

    crate::admin::spawn(admin, shared.clone())?;

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload_keys(&shared),
            _ => break,
        }
    }
    tracing::info!("shutting down");
    shared.shutting_down.store(true, Ordering::SeqCst);
    for i in 0..shards {
        broadcast(&shared, ShardId(i as u16), || Msg::Command(Command::Shutdown));
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A panic anywhere (a shard, the admin thread) is a bug that leaves the
/// server partly down: a shard's connections, rooms and hand-offs would
/// hang while the process and its other shards looked healthy. So the
/// process logs it and exits with status 70 (EX_SOFTWARE), for the
/// supervisor to restart it and the clients to reconnect.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(thread, panic = %info, "thread panicked; exiting with status 70");
        default(info);
        std::process::exit(70);
    }));
}

/// Sends a command to a shard from outside, waiting while its lane is full.
fn broadcast(shared: &Shared, shard: ShardId, make: impl Fn() -> Msg) {
    let mut msg = make();
    for _ in 0..1000 {
        match shared.mesh.send(shared.mesh.outside(), shard, msg) {
            Ok(()) => return,
            Err(m) => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    tracing::error!(shard = shard.0, "shard does not take commands");
}

fn reload_keys(shared: &Arc<Shared>) {
    match shared.verifier.reload() {
        Ok(v) => {
            for i in 0..shared.mesh.shards() {
                broadcast(shared, ShardId(i as u16), || Msg::Command(Command::ReloadKeys(v.clone())));
            }
            tracing::info!("keys reloaded");
        }
        Err(e) => tracing::error!(error = %e, "key reload failed; keeping the old keys"),
    }
}

/// How long start-up waits for another listener on the client port to go.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// Waits until no other socket listens on `addr` (a fixed port), or fails.
///
/// The shards' listeners share the port with SO_REUSEPORT, and the kernel
/// puts every such listener of the same user in one group: a listener left
/// by another process would take its share of our new connections. That is
/// another server running by mistake, or the listener of a server just
/// killed under io_uring, which the kernel releases only when it has torn
/// down the dead process's ring, after the process is gone; the
/// connections it takes meanwhile are reset. A socket bound without
/// SO_REUSEPORT finds out: its bind fails while any listener holds the port.
fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + PORT_WAIT;
    let mut logged = false;
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // TIME_WAIT connections of an earlier run do not count.
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut logged, true) {
                    tracing::warn!(%addr, "another socket listens on the client port; waiting for it to close");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => bail!("cannot listen on {addr}: {e} (another process listens on it)"),
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

type Ready = mpsc::Sender<Result<&'static str, String>>;

fn run_shard(
    shared: Arc<Shared>,
    id: ShardId,
    listener: std::net::TcpListener,
    driver: IoDriver,
    grace: Duration,
    ready: Ready,
) {
    let span = tracing::info_span!("shard", shard = id.0);
    let _enter = span.enter();
    let coop = shared.config.io.uring_coop_taskrun;
    let main = shard_main(shared, id, listener, grace, ready.clone());
    let result = match driver {
        IoDriver::Auto => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .uring_builder(uring_params(coop))
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
        IoDriver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(uring_params(coop))
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
        IoDriver::Epoll => {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().map(|mut rt| rt.block_on(main))
        }
    };
    if let Err(e) = result {
        let _ = ready.send(Err(format!("cannot start the {driver:?} I/O driver: {e}")));
    }
}

/// io_uring settings for a shard's ring: with `coop_taskrun`, completions
/// are processed when the shard next enters the kernel instead of
/// interrupting it (IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG).
fn uring_params(coop_taskrun: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if coop_taskrun {
        b.setup_coop_taskrun().setup_taskrun_flag();
    }
    b
}

async fn shard_main(shared: Arc<Shared>, id: ShardId, listener: std::net::TcpListener, grace: Duration, ready: Ready) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let shard = match Shard::new(id, shared.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create the shard's epoll set: {e}")));
            return;
        }
    };
    shared.alive(id, std::time::Instant::now());
    let uring = !monoio::utils::is_legacy();
    shard.metrics.uring.set(u64::from(uring));
    tracing::info!(driver = if uring { "io_uring" } else { "epoll" }, "shard started");
    let _ = ready.send(Ok(if uring { "io_uring" } else { "epoll" }));
    drop(ready);
    shard.listener_fd.set(Some(std::os::fd::AsRawFd::as_raw_fd(&listener)));
    monoio::spawn(handshake::accept_loop(shard.clone(), listener));
    monoio::spawn(tick_loop(shard.clone()));
    monoio::spawn(crate::shard::reactor::run(shard.clone()));
    const BATCH: usize = 1024;
    while !shard.stopping.get() {
        shared.mesh.wait(id).await;
        loop {
            let n = drain_mesh(&shard, BATCH);
            shard.flush_backlog();
            if n < BATCH || shard.stopping.get() {
                break;
            }
            // A long backlog: let connection tasks run between batches.
            yield_now().await;
        }
    }
    // Graceful: connections were told to close; keep serving the mesh (their
    // last answers) until they are gone or the grace period ends.
    let drain = async {
        let mesh = async {
            loop {
                shared.mesh.wait(id).await;
                drain_mesh(&shard, BATCH);
            }
        };
        monoio::select! {
            _ = shard.drained() => {},
            _ = mesh => {},
        }
    };
    if monoio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("grace period over, closing remaining connections");
    }
}

/// Handles up to `max` messages from the shard's mesh queues, then sends
/// the answers they resolved (one `accepted` frame per connection).
fn drain_mesh(shard: &std::rc::Rc<Shard>, max: usize) -> usize {
    shard.set_now(std::time::Instant::now());
    let n = shard.shared.mesh.drain(shard.id, max, |_, msg| match msg {
        // Adopting a socket is the I/O layer's work, not the shard core's.
        Msg::Handoff(h) => ws_io::adopt(shard, *h),
        msg => shard.handle(msg),
    });
    shard.flush_dirty();
    n
}

async fn tick_loop(shard: std::rc::Rc<Shard>) {
    let mut interval = monoio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        shard.tick(std::time::Instant::now());
    }
}

/// Yields once to the scheduler.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
