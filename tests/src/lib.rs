//! Helpers for the end-to-end tests in `tests/tests/`: finding the real
//! binaries and running them with a private data directory.
//!
//! The tests run the `switchboard` binary that Cargo built for this
//! workspace (`cargo build --bins` first; `scripts/test.sh` does), or the one
//! named by `SWITCHBOARD_BIN`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("switchboard");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bins` first (scripts/test.sh does)",
        bin.display()
    );
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
        Self {
            data_dir: tempfile::tempdir().expect("temp dir"),
        }
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
        use std::io::Write;
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
