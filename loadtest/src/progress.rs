//! A progress bar on stderr during a run (`indicatif`), drawn only when
//! stderr is a terminal: a run piped into a file or a test stays silent.
//! Only the coordinating thread (or, for counts, the connecting threads
//! once per connection) touches it, never the hot path.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over time (the run's schedule) or over a count; a no-op when
/// stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    from_ns: u64,
}

impl Progress {
    /// How often a sleeping coordinator wakes to move the bar.
    pub const TICK: Duration = Duration::from_millis(100);

    /// A bar over the run's clock from `from_ns` to `to_ns`, in seconds.
    pub fn time(label: &str, from_ns: u64, to_ns: u64) -> Self {
        let total_ms = to_ns.saturating_sub(from_ns) / 1_000_000;
        Self::new(label, total_ms, "{prefix} [{bar:40}] {elapsed_precise} / {msg}", from_ns, |b| {
            b.set_message(format!("{:.1} s", total_ms as f64 / 1e3))
        })
    }

    /// A bar over a count (connections opened).
    pub fn count(label: &str, total: u64) -> Self {
        Self::new(label, total, "{prefix} [{bar:40}] {pos}/{len} ({per_sec})", 0, |_| {})
    }

    fn new(label: &str, len: u64, template: &str, from_ns: u64, init: impl FnOnce(&ProgressBar)) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, from_ns };
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        init(&bar);
        Self { bar: Some(bar), from_ns }
    }

    /// Moves a time bar to `now_ns` on the run's clock.
    pub fn at(&self, now_ns: u64) {
        if let Some(b) = &self.bar {
            b.set_position((now_ns.saturating_sub(self.from_ns) / 1_000_000).min(b.length().unwrap_or(0)));
        }
    }

    /// Adds `n` to a count bar.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
