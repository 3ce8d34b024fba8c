//! Time added per request by the layer, against a bare axum router in the same run.
//!
//! One criterion group (`layer`) with every configuration of `common::Config`, each
//! request a `oneshot` through the router on a current-thread tokio runtime, body
//! drained. After the group it prints, per configuration, criterion's median and the
//! median of an interleaved timed loop, both as added nanoseconds against the
//! configuration's baseline (`bare`, or `bare_traceparent` for the `*_traceparent`
//! ones). Wall-clock time on the shared 2-core machines moves by 30–50% from run to
//! run: `benches/instr.rs` gives the deterministic figure.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Config, Setup, runtime};
use criterion::{Criterion, criterion_group, criterion_main};

/// The interleaved loop: rounds x requests per round, per configuration.
const ROUNDS: usize = 15;
const PER_ROUND: u32 = 15_000;

fn layer(c: &mut Criterion) {
    let rt = runtime();
    let setups: Vec<Setup> = Config::ALL.into_iter().map(Setup::new).collect();

    let mut group = c.benchmark_group("layer");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for setup in &setups {
        group.bench_function(setup.config.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        setup.one().await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // Only when measuring (`cargo bench` passes `--bench`), not in `cargo test`'s
    // one-iteration check.
    if std::env::args().any(|a| a == "--bench") {
        report("criterion: median (± median absolute deviation)", &criterion_medians());
        report(
            &format!(
                "interleaved loop: {ROUNDS} rounds x {PER_ROUND} requests per configuration, order rotated each \
                 round; median of the rounds, and median of the per-round differences to the baseline"
            ),
            &interleaved(&rt, &setups),
        );
    }
    rt.block_on(async {
        for setup in &setups {
            setup.shutdown().await;
        }
    });
    for setup in &setups {
        if let Some(apm) = &setup.apm {
            let stats = apm.stats();
            assert_eq!(stats.spans_dropped(), 0, "{}: {stats:?}", setup.config.name());
            assert_eq!(
                stats.spans_exported > 0,
                setup.config.exports(),
                "{}: {stats:?}",
                setup.config.name()
            );
        }
    }
}

/// What one method measured for one configuration, in nanoseconds per request.
struct Figure {
    config: Config,
    median: Option<f64>,
    /// The spread: criterion's median absolute deviation, or the range of the rounds.
    spread: String,
    /// The added time against the baseline measured in the same round, when known.
    added: Option<f64>,
}

/// Criterion's median per configuration, from `target/criterion/layer/<name>/new/estimates.json`.
fn criterion_medians() -> Vec<Figure> {
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion"));
    Config::ALL
        .into_iter()
        .map(|config| {
            let path = dir.join("layer").join(config.name()).join("new/estimates.json");
            let estimates = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let point = |what: &str| estimates.as_ref().and_then(|e| e[what]["point_estimate"].as_f64());
            Figure {
                config,
                median: point("median"),
                spread: point("median_abs_dev").map_or_else(String::new, |d| format!(" (± {d:.0})")),
                added: None,
            }
        })
        .collect()
}

/// Every configuration in turn, `ROUNDS` times, starting each round one
/// configuration further; per configuration the median of its rounds and the median
/// of its per-round difference to its baseline (which cancels slow drifts of the
/// machine's speed).
fn interleaved(rt: &tokio::runtime::Runtime, setups: &[Setup]) -> Vec<Figure> {
    let mut rounds: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); setups.len()];
    for round in 0..ROUNDS {
        for i in (0..setups.len()).map(|i| (i + round) % setups.len()) {
            let setup = &setups[i];
            let elapsed = rt.block_on(async {
                for _ in 0..500 {
                    setup.one().await;
                }
                let start = Instant::now();
                for _ in 0..PER_ROUND {
                    setup.one().await;
                }
                start.elapsed()
            });
            rounds[i].push(elapsed.as_nanos() as f64 / f64::from(PER_ROUND));
        }
    }
    let index = |config: Config| setups.iter().position(|s| s.config == config);
    setups
        .iter()
        .zip(&rounds)
        .map(|(setup, own)| {
            let base = setup.config.baseline();
            let added = index(base).filter(|_| base != setup.config).map(|b| {
                let diffs: Vec<f64> = own.iter().zip(&rounds[b]).map(|(x, y)| x - y).collect();
                median(diffs)
            });
            let lo = own.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = own.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Figure {
                config: setup.config,
                median: Some(median(own.clone())),
                spread: format!(" (rounds {lo:.0}..{hi:.0})"),
                added,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(title: &str, figures: &[Figure]) {
    let of = |config: Config| figures.iter().find(|f| f.config == config).and_then(|f| f.median);
    println!("\n{title} (ns per request):");
    for f in figures {
        let name = f.config.name();
        let Some(ns) = f.median else {
            println!("  {name}: no estimate");
            continue;
        };
        let base = f.config.baseline();
        match of(base) {
            Some(b) if base != f.config => {
                let same_round = f
                    .added
                    .map_or_else(String::new, |a| format!(" (per-round difference {a:+.0})"));
                println!(
                    "  {name}: {ns:.0} ns/request{}, {:+.0} ns vs {}{same_round}, ratio {:.2}",
                    f.spread,
                    ns - b,
                    base.name(),
                    ns / b
                );
            }
            _ => println!("  {name}: {ns:.0} ns/request{} (baseline)", f.spread),
        }
    }
}

criterion_group!(benches, layer);
criterion_main!(benches);
