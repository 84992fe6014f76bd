//! CPU time of a process from `/proc/<pid>/stat` (user + system), to report
//! the generator's and the server's CPU use over the measured window, and of
//! each generator thread from its CPU clock, to tell when the generator
//! rather than the server set the pace ([`GeneratorCpu::limited`]).

use std::time::{Duration, Instant};

/// A generator thread that used at least this much of a core over the
/// window may have been the limit of the run.
pub const GENERATOR_LIMIT_PCT: f64 = 90.0;

/// A thread's CPU clock, readable from any thread of the process while the
/// thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadClock(libc::clockid_t);

impl ThreadClock {
    /// The calling thread's clock, if the system has one.
    pub fn current() -> Option<Self> {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self has no preconditions; pthread_getcpuclockid
        // writes one clockid_t into the variable we own.
        let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        (r == 0).then_some(Self(id))
    }

    /// CPU time the thread used so far (`None` once it has exited).
    pub fn time(self) -> Option<Duration> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec into the struct we own; a
        // stale clock id is an error (EINVAL), not undefined behaviour.
        let r = unsafe { libc::clock_gettime(self.0, &mut ts) };
        (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// The generator's CPU times at one instant: the process and each
/// generator thread.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    process: Option<Duration>,
    threads: Vec<Option<Duration>>,
}

impl Sample {
    /// Reads this process's CPU time and that of the threads `clocks`.
    pub fn take(clocks: &[ThreadClock]) -> Self {
        let at = Instant::now();
        Self { at, process: cpu_time(None), threads: clocks.iter().map(|c| c.time()).collect() }
    }
}

/// The generator's CPU use over the measured window, percent of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeneratorCpu {
    /// The whole process.
    pub process_pct: Option<f64>,
    /// The busiest generator thread.
    pub busiest_thread_pct: Option<f64>,
    /// Generator threads of the run.
    pub threads: usize,
    /// Cores the process may run on (its affinity mask, cgroup quota).
    pub cores: usize,
}

impl GeneratorCpu {
    /// The use between samples `a` and `b` of a run with `threads`
    /// generator threads.
    pub fn between(a: &Sample, b: &Sample, threads: usize) -> Self {
        let wall = b.at.saturating_duration_since(a.at);
        let busiest_thread_pct =
            a.threads.iter().zip(&b.threads).filter_map(|(&t0, &t1)| percent(t0, t1, wall)).max_by(f64::total_cmp);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { process_pct: percent(a.process, b.process, wall), busiest_thread_pct, threads, cores }
    }

    /// True when the generator had no CPU to spare, so the figures may
    /// measure it rather than the server: a generator thread used at least
    /// [`GENERATOR_LIMIT_PCT`] of a core, or the process that much of each
    /// core its threads can have (fewer cores than threads: they share).
    pub fn limited(&self) -> bool {
        let thread = self.busiest_thread_pct.is_some_and(|t| t >= GENERATOR_LIMIT_PCT);
        let usable = self.threads.clamp(1, self.cores.max(1)) as f64;
        thread || self.process_pct.is_some_and(|p| p >= GENERATOR_LIMIT_PCT * usable)
    }

    /// The warning for a [`GeneratorCpu::limited`] run.
    pub fn warning(&self) -> Option<String> {
        self.limited().then(|| limit_warning(self.busiest_thread_pct, self.process_pct))
    }
}

/// What a report says when its run was [`GeneratorCpu::limited`], from its
/// figures.
pub fn limit_warning(busiest_thread_pct: Option<f64>, process_pct: Option<f64>) -> String {
    let process = process_pct.map_or("-".to_owned(), |p| format!("{p:.0}%"));
    let used = match busiest_thread_pct {
        Some(t) => format!("its busiest thread used {t:.0}% of a core, the process {process}"),
        None => format!("the process used {process}"),
    };
    format!(
        "the generator may be the limit: {used} (the limit is {GENERATOR_LIMIT_PCT:.0}% of each core its \
         threads can have); give it more --threads and cores, or less load"
    )
}

/// Total CPU time (user + system) of process `pid` (`None`: this process),
/// or `None` if it cannot be read.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    let hz = clock_ticks_per_sec();
    Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// CPU use between two readings over `wall`, in percent of one core.
pub fn percent(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (!wall.is_zero()).then(|| 100.0 * used.as_secs_f64() / wall.as_secs_f64())
}

/// utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")" come field 3 (state) onwards: utime is the 12th of those.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; no pointers involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    fn at(thread: Option<f64>, process: Option<f64>, threads: usize, cores: usize) -> GeneratorCpu {
        GeneratorCpu { process_pct: process, busiest_thread_pct: thread, threads, cores }
    }

    #[test]
    fn the_generator_is_the_limit_when_a_thread_or_its_cores_are_90_percent_busy() {
        assert!(at(Some(90.0), Some(95.0), 1, 2).limited());
        assert!(!at(Some(89.9), Some(89.9), 1, 2).limited());
        // Two threads: one saturated is enough, whatever the total.
        assert!(at(Some(97.0), Some(120.0), 2, 2).limited());
        assert!(!at(Some(60.0), Some(120.0), 2, 2).limited());
        // Two threads on one core: each gets half, the core is full.
        assert!(at(Some(50.0), Some(95.0), 2, 1).limited());
        // Without thread clocks, the process per usable core.
        assert!(at(None, Some(180.0), 2, 4).limited());
        assert!(!at(None, Some(170.0), 2, 4).limited());
        assert!(at(None, Some(92.0), 4, 1).limited());
        assert!(!at(None, None, 1, 1).limited());
        let w = at(Some(97.4), Some(99.0), 1, 2).warning().unwrap();
        assert!(w.contains("busiest thread used 97% of a core, the process 99%"), "{w}");
        assert_eq!(at(Some(10.0), Some(10.0), 1, 2).warning(), None);
        let w = at(None, Some(183.0), 2, 2).warning().unwrap();
        assert!(w.contains("the process used 183% (the limit is 90%"), "{w}");
    }

    #[test]
    fn a_busy_thread_shows_on_its_own_clock() {
        let clock = ThreadClock::current().unwrap();
        let a = Sample::take(&[clock]);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(t0.elapsed());
        }
        let b = Sample::take(&[clock]);
        let cpu = GeneratorCpu::between(&a, &b, 1);
        let busiest = cpu.busiest_thread_pct.unwrap();
        // Spinning: up to a whole core (less on a loaded machine).
        assert!(busiest > 1.0 && busiest <= 105.0, "{cpu:?}");
        // A thread that has exited has no clock.
        let gone = std::thread::spawn(|| ThreadClock::current().unwrap()).join().unwrap();
        assert_eq!(gone.time(), None);
    }

    #[test]
    fn own_cpu_time_is_readable_and_percent_is_relative_to_wall_time() {
        assert!(cpu_time(None).is_some());
        let p = percent(Some(Duration::from_millis(100)), Some(Duration::from_millis(600)), Duration::from_secs(1));
        assert_eq!(p, Some(50.0));
        assert_eq!(percent(None, Some(Duration::ZERO), Duration::from_secs(1)), None);
    }
}
