//! Interoperability with an independent client: `tests/python/interop.py`
//! (the PyPI `websockets` library, frames built by hand from
//! docs/protocol.md) against the real server. The Rust side only makes the
//! envelopes and tokens; the Python side checks every byte it receives.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_e2e::{Server, envelope};

/// The Python interpreter, after checking that it can import `websockets`.
/// A missing interpreter or package fails the test: it must not pass
/// without having run.
fn python() -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).args(["-c", "import websockets; print(websockets.__version__)"]).output();
    match out {
        Ok(o) if o.status.success() => python,
        Ok(o) => panic!(
            "{python} cannot import the `websockets` package (run scripts/install-test-deps.sh): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {python} ({e}); install Python 3 and run scripts/install-test-deps.sh"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn python_websockets_client_interoperates() {
    let python = python();
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let to_bob = format!("user:{bob}");
    let spec = serde_json::json!({
        "url": s.url(),
        "alice": {"user": alice, "token": s.token(&alice)},
        "bob": {"user": bob, "token": s.token(&bob)},
        "bad_token": switchboard_e2e::sign_hs256(
            &switchboard_e2e::default_claims(serde_json::json!({"sub": alice})),
            b"not-the-server-secret-but-32-bytes-long",
        ),
        "to_bob": [
            hex(&envelope(&alice, &to_bob, &(0..=255u8).collect::<Vec<_>>())),
            hex(&envelope(&alice, &to_bob, b"after the errors")),
            hex(&envelope(&alice, &to_bob, b"no answer wanted")),
        ],
        "to_room": hex(&envelope(&alice, "room:interop", b"to the room")),
        "spoofed": hex(&envelope(&bob, &to_bob, b"not from bob")),
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/interop.py");
    let out_path = s.data_dir().join("interop.out");
    let err_path = s.data_dir().join("interop.err");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start interop.py");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for interop.py") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("interop.py did not finish in 60 s: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20)); // polling an exit status
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "interop.py failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("interop: ok"), "{stdout}\n{stderr}");
    eprint!("{stdout}");
}
