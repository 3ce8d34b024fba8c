//! Deterministic cost of the layer, in instructions (see BENCHMARKING.md at the repository root):
//! `instr <config> <N>` builds one configuration, warms it up, drives N requests
//! one after another on a current-thread runtime, then shuts the export pipeline
//! down so the export thread's work is counted too. Run it under
//! `valgrind --tool=callgrind --fair-sched=yes` at two sizes and take the
//! difference; `scripts/instr.sh` does that for every configuration.
//!
//! Without arguments (as `cargo bench` and `cargo test --benches` run every bench
//! target) it prints its usage and exits successfully.

mod common;

use std::process::ExitCode;

use common::{Config, Setup, runtime};

const WARMUP: u64 = 2_000;

fn usage() -> String {
    let names: Vec<&str> = Config::ALL.iter().map(|c| c.name()).collect();
    format!("usage: instr <config> <N>\n  config: {}", names.join(" | "))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, n) = match args.as_slice() {
        [config, n] if !config.starts_with('-') => match (Config::parse(config), n.parse::<u64>()) {
            (Some(config), Ok(n)) => (config, n),
            _ => {
                eprintln!("{}", usage());
                return ExitCode::from(2);
            }
        },
        // `cargo bench` passes `--bench`, `cargo test` nothing: not a measurement.
        _ => {
            eprintln!("{}", usage());
            return ExitCode::SUCCESS;
        }
    };

    let setup = Setup::new(config);
    runtime().block_on(async {
        for _ in 0..WARMUP {
            setup.one().await;
        }
        for _ in 0..n {
            setup.one().await;
        }
        setup.shutdown().await;
    });

    let Some(apm) = &setup.apm else {
        eprintln!("{}: {n} requests (+{WARMUP} warm-up), no layer", setup.config.name());
        return ExitCode::SUCCESS;
    };
    let stats = apm.stats();
    eprintln!(
        "{}: {n} requests (+{WARMUP} warm-up), compare with {}; {stats:?}",
        config.name(),
        config.baseline().name()
    );
    let expected = (WARMUP + n) * config.spans_per_request();
    if stats.spans_exported != expected || stats.spans_dropped() != 0 {
        eprintln!(
            "{}: expected {expected} spans exported and none dropped, got {} exported, {} dropped",
            config.name(),
            stats.spans_exported,
            stats.spans_dropped()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
