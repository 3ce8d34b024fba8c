//! Time added per request by tower-apm and by the stacks users would build
//! instead, every configuration of `tower_apm_peers::Peer` in the same run.
//!
//! One criterion group (`peers`), each request a `oneshot` through the router on a
//! current-thread tokio runtime, body drained. After the group (under `cargo bench`
//! only) it prints, per configuration, criterion's median and the median of an
//! interleaved loop of rounds, as added nanoseconds against `bare`, the ratio to
//! `bare`, and for each peer the ratio of its added time to that of the tower-apm
//! configuration doing the same work. The instruction counts (deterministic) come
//! from `scripts/instr.sh --peers`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_apm_peers::common::runtime;
use tower_apm_peers::{Install, Peer, PeerSetup};

/// The interleaved loop: rounds x requests per round, per configuration.
const ROUNDS: usize = 11;
const PER_ROUND: u32 = 10_000;

fn peers(c: &mut Criterion) {
    let rt = runtime();
    let setups: Vec<PeerSetup> = {
        let _enter = rt.enter();
        Peer::ALL
            .into_iter()
            .map(|p| PeerSetup::new(p, Install::Scoped))
            .collect()
    };

    let mut group = c.benchmark_group("peers");
    group
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for setup in &setups {
        group.bench_function(setup.peer.name(), |b| {
            b.iter_custom(|iters| {
                let _scope = setup.enter();
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

    if std::env::args().any(|a| a == "--bench") {
        report("criterion: median", &criterion_medians());
        report(
            &format!(
                "interleaved loop: {ROUNDS} rounds x {PER_ROUND} requests per configuration, order rotated each \
                 round; added = median of the per-round differences to bare"
            ),
            &interleaved(&rt, &setups),
        );
    }
    for setup in &setups {
        let _scope = setup.enter();
        let exported = rt.block_on(setup.shutdown());
        assert_eq!(
            exported > 0,
            setup.peer.exports(),
            "{}: {exported} spans exported",
            setup.peer.name()
        );
    }
}

/// One configuration's figures, in nanoseconds per request.
struct Figure {
    peer: Peer,
    median: Option<f64>,
    /// Added time against bare (measured in the same rounds when known).
    added: Option<f64>,
}

/// Criterion's median per configuration, from `<target>/criterion/peers/<name>/new/estimates.json`.
fn criterion_medians() -> Vec<Figure> {
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion"));
    let medians: Vec<(Peer, Option<f64>)> = Peer::ALL
        .into_iter()
        .map(|peer| {
            let path = dir.join("peers").join(peer.name()).join("new/estimates.json");
            let median = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|e| e["median"]["point_estimate"].as_f64());
            (peer, median)
        })
        .collect();
    let bare = medians[0].1;
    medians
        .into_iter()
        .map(|(peer, median)| Figure {
            peer,
            median,
            added: median.zip(bare).map(|(m, b)| m - b),
        })
        .collect()
}

/// Every configuration in turn, `ROUNDS` times, starting each round one
/// configuration further; per configuration the median of its rounds and the median
/// of its per-round difference to bare (which cancels slow drifts of the machine).
fn interleaved(rt: &tokio::runtime::Runtime, setups: &[PeerSetup]) -> Vec<Figure> {
    let mut rounds: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); setups.len()];
    for round in 0..ROUNDS {
        for i in (0..setups.len()).map(|i| (i + round) % setups.len()) {
            let setup = &setups[i];
            let _scope = setup.enter();
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
    let bare = &rounds[0];
    setups
        .iter()
        .zip(&rounds)
        .map(|(setup, own)| Figure {
            peer: setup.peer,
            median: Some(median(own.clone())),
            added: Some(median(own.iter().zip(bare).map(|(x, b)| x - b).collect())),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(title: &str, figures: &[Figure]) {
    let find = |peer: Peer| figures.iter().find(|f| f.peer == peer);
    let bare = find(Peer::Bare).and_then(|f| f.median);
    println!("\n{title} (ns per request):");
    for f in figures {
        let name = f.peer.name();
        let (Some(ns), Some(bare)) = (f.median, bare) else {
            println!("  {name:<28} no estimate");
            continue;
        };
        if f.peer == Peer::Bare {
            println!("  {name:<28} {ns:>8.0} ns (baseline)");
            continue;
        }
        let added = f.added.unwrap_or(ns - bare);
        let versus = f
            .peer
            .ours()
            .and_then(|o| find(o)?.added)
            .map_or_else(String::new, |ours| {
                format!(
                    ", {:.2}x the added time of {}",
                    added / ours,
                    f.peer.ours().map_or("", Peer::name)
                )
            });
        println!(
            "  {name:<28} {ns:>8.0} ns, {added:>+7.0} ns added, {:.2}x bare{versus}",
            ns / bare
        );
    }
}

criterion_group!(benches, peers);
criterion_main!(benches);
