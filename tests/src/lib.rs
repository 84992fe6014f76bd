//! End-to-end tests live in `tests/tests/`: each starts the real
//! `switchboard` binary (built by Cargo for the test run) and checks what a
//! real client sees, byte for byte.
