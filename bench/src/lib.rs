//! criterion micro-benchmarks of Switchboard's hot path live in `benches/`;
//! run them with `cargo bench -p switchboard-bench`. Figures and the commands
//! that produced them are recorded in `BENCHMARKS.md`.
