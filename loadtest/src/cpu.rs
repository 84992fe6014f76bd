//! CPU time of a process from `/proc/<pid>/stat` (user + system), to report
//! the generator's and the server's CPU use over the measured window.

use std::time::Duration;

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

    #[test]
    fn own_cpu_time_is_readable_and_percent_is_relative_to_wall_time() {
        assert!(cpu_time(None).is_some());
        let p = percent(Some(Duration::from_millis(100)), Some(Duration::from_millis(600)), Duration::from_secs(1));
        assert_eq!(p, Some(50.0));
        assert_eq!(percent(None, Some(Duration::ZERO), Duration::from_secs(1)), None);
    }
}
