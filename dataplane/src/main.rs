//! `switchboard`: the server and its client tool. See `switchboard --help`.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, not glibc's malloc: its size-class slabs keep the short-lived
/// allocations of handshakes apart from the small long-lived ones of the
/// connections they open, so a burst of simultaneous handshakes leaves no
/// holes between them (idle memory per connection opened 200 at a time:
/// 2.3–2.9 KiB with glibc, under 1 KiB with this; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's defaults for this process: freed pages go back to the kernel
/// within about a second (`dirty_decay_ms`; default 10 s), at once once
/// they have been decayed (`muzzy_decay_ms`), by jemalloc's own background
/// thread rather than by a shard in the middle of its work. The
/// `_RJEM_MALLOC_CONF` environment variable overrides these.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = switchboard::cli::Cli::parse();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
