//! Hot-path costs of the data plane's own structures: presence lookup, the
//! routing decision (owner shard), JWT verification with and without the
//! per-shard cache, and a cross-shard queue batch.
//!
//! Run: `cargo bench -p switchboard-bench --bench dataplane`.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::auth::{AuthConfig, ShardVerifier, TokenRequest, Verifier, issue_hs256};
use switchboard::shard::mesh::Mesh;
use switchboard::shard::presence::{Owners, Presence};
use switchboard::shard::{ConnId, Member, ShardId};
use switchboard_protocol::UserId;

fn presence(c: &mut Criterion) {
    let mut p = Presence::default();
    for i in 0..100_000u32 {
        p.add(&format!("user-{i}"), Member { shard: ShardId(0), conn: ConnId { slot: i, generation: 1 } });
    }
    let mut g = c.benchmark_group("presence_lookup");
    g.throughput(Throughput::Elements(1));
    g.bench_function("100k_users_hit", |b| b.iter(|| black_box(p.connections(black_box("user-54321")).len())));
    g.bench_function("100k_users_miss", |b| b.iter(|| black_box(p.connections(black_box("nobody-here")).len())));
    g.finish();
}

fn routing(c: &mut Criterion) {
    let owners = Owners::new(8, 0x5357_4254_4348_4244);
    let mut g = c.benchmark_group("routing_decision");
    g.throughput(Throughput::Elements(1));
    g.bench_function("owner_of_user_8_shards", |b| b.iter(|| black_box(owners.user(black_box("alice@example.com")))));
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let secret = [7u8; 32];
    let verifier = Verifier::from_config(&AuthConfig::default(), Some(&secret)).expect("verifier");
    let now = SystemTime::now();
    let req = TokenRequest {
        user: UserId::parse("alice").expect("valid"),
        device: None,
        roles: vec![],
        ttl: Duration::from_secs(3600),
        issuer: "switchboard",
        audience: "switchboard",
    };
    let token = issue_hs256(&req, &secret, now).expect("token");
    let now_secs = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let mut g = c.benchmark_group("jwt_verify_hs256");
    g.throughput(Throughput::Elements(1));
    g.bench_function("uncached", |b| b.iter(|| black_box(verifier.verify(black_box(&token), now_secs).is_ok())));
    let mut shard = ShardVerifier::new(verifier.clone());
    shard.verify(&token, now_secs).expect("valid");
    g.bench_function("cached", |b| b.iter(|| black_box(shard.verify(black_box(&token), now_secs).is_ok())));
    g.finish();
}

fn mesh(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_queue");
    for batch in [1usize, 64] {
        let mesh = Mesh::<u64>::new(2, 4096);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("push_then_drain", batch), &batch, |b, &batch| {
            b.iter(|| {
                for i in 0..batch as u64 {
                    mesh.send(ShardId(0), ShardId(1), i).expect("room in the queue");
                }
                let mut sum = 0;
                mesh.drain(ShardId(1), batch, |_, m| sum += m);
                black_box(sum)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, presence, routing, jwt, mesh);
criterion_main!(benches);
