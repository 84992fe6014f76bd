//! Admission: the global and per-address connection limits
//! ([`Admission`], [`ConnPermit`]) and the rate limit on logs about bad
//! input ([`LogLimiter`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_protocol::ErrorCode;

/// The connection counts behind the global and per-address limits.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    connections: AtomicUsize,
    /// Connections per peer address; touched only at connect and close.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            max_per_ip,
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new connection from `ip` under the global and per-address
    /// limits; the permit releases both when dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, ErrorCode> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorCode::ConnectionLimit);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorCode::ConnectionLimit);
        }
        *n += 1;
        Ok(ConnPermit { admission: self.clone(), ip })
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A counted connection slot; released on drop.
pub(crate) struct ConnPermit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.admission.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.admission.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Allows at most `per_sec` log lines per second (per shard).
pub(crate) struct LogLimiter {
    per_sec: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    dropped: Cell<u64>,
}

impl LogLimiter {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self { per_sec, window: Cell::new(None), used: Cell::new(0), dropped: Cell::new(0) }
    }

    /// True if a line may be logged now.
    pub(crate) fn allow(&self) -> bool {
        let now = Instant::now();
        if self.window.get().is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            let dropped = self.dropped.replace(0);
            if dropped > 0 {
                tracing::info!(dropped, "log lines about bad input suppressed in the last second");
            }
            self.window.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() < self.per_sec {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.dropped.set(self.dropped.get() + 1);
            false
        }
    }
}
