//! Route compiler speed on a large fleet: 10 pools x 100 IPs (1,000 IPs), 50
//! routes, 10,000 listed domains. Targets: a full compile under 50 ms, the
//! incremental re-route after one IP is blocked under 1 ms.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jiff::Timestamp;

use mailfleet::api::ReputationState;
use mailfleet::routing::example::{pair, synthetic_fleet};
use mailfleet::routing::{compile, json, ObjectKey, RouteCompiler};

const POOLS: usize = 10;
const IPS_PER_POOL: usize = 100;
const ROUTES: usize = 50;
const DOMAINS: usize = 10_000;

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().expect("a valid timestamp")
}

fn compile_routes(c: &mut Criterion) {
    let (pools, routes) = synthetic_fleet(POOLS, IPS_PER_POOL, ROUTES, DOMAINS, now());
    let ip_count: usize = pools.iter().map(|p| p.spec.ips.len()).sum();
    assert_eq!(ip_count, POOLS * IPS_PER_POOL);

    c.bench_function("full compile (1000 IPs x 50 routes x 10000 domains)", |b| {
        b.iter(|| compile(black_box(&pools), black_box(&routes), now()))
    });

    let table = compile(&pools, &routes, now());
    c.bench_function("render JSON route table (same fleet)", |b| {
        b.iter(|| json::render(black_box(&table)))
    });

    // Block, for microsoft, an IP of pool-0 that microsoft routes currently use.
    let compiler = RouteCompiler::new(&pools, &routes, now());
    let pool_key = ObjectKey::new("bench", "pool-0");
    let status = pools[0]
        .status
        .as_ref()
        .expect("the synthetic fleet has status");
    let mut ip = status
        .ips
        .iter()
        .find(|s| {
            s.pair("microsoft")
                .is_some_and(|p| p.state == ReputationState::Healthy)
        })
        .expect("a healthy IP for microsoft")
        .clone();
    ip.reputation.retain(|r| r.provider != "microsoft");
    ip.reputation
        .push(pair("microsoft", ReputationState::Blocked, 0, now()));
    let affected = compiler
        .clone()
        .set_ip_status(&pool_key, &ip, now())
        .expect("a known pool and IP");
    assert!(!affected.is_empty(), "the block must re-route something");
    assert!(affected.iter().all(|r| r.provider == "microsoft"));

    c.bench_function("incremental re-route after one IP is blocked", |b| {
        b.iter_batched(
            || compiler.clone(),
            |mut compiler| {
                let changed = compiler.set_ip_status(&pool_key, black_box(&ip), now());
                // Returned so that dropping the clone stays outside the measurement.
                (compiler, changed)
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, compile_routes);
criterion_main!(benches);
