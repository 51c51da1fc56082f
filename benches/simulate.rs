//! Simulator speed: the first day of the incident (seed-2021-11 cut to one day
//! at the incident's own rate, about 2.3 million messages), without and with
//! mailfleet watching. The full 14-day incident is timed with the release
//! binary (docs/BENCHMARKS.md, "Simulator").
//!
//! `cargo bench --bench simulate` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailfleet::sim::{run_scenario, scenario, Mode, Options, Scenario};

fn first_day(mode: Mode) -> Scenario {
    let mut s = scenario("seed-2021-11").expect("a known scenario");
    s.runs.retain(|r| r.mode == mode);
    s.submit_seconds = 86_400;
    s.volume /= 14;
    s
}

fn simulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate incident day 1");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (mode, name) in [(Mode::Baseline, "baseline"), (Mode::Mailfleet, "mailfleet")] {
        let s = first_day(mode);
        let messages = run_scenario(&s, &Options::default())
            .expect("the scenario runs")
            .runs[0]
            .submitted;
        group.throughput(Throughput::Elements(messages));
        group.bench_function(name, |b| {
            b.iter(|| run_scenario(black_box(&s), &Options::default()))
        });
    }
    group.finish();
}

criterion_group!(benches, simulate);
criterion_main!(benches);
