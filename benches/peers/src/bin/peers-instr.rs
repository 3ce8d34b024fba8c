//! Deterministic cost of each configuration of `tower_apm_peers`, in instructions
//! (see BENCHMARKING.md at the repository root): `peers-instr <config> <N>` builds one configuration (its
//! subscriber and providers installed globally, as an application would), warms it
//! up, drives N requests one after another on a current-thread runtime, then shuts
//! the export pipeline down so its work is counted too. `scripts/instr.sh --peers`
//! runs it under callgrind at two sizes and takes the difference.

use std::process::ExitCode;

use tower_apm_peers::common::runtime;
use tower_apm_peers::{Install, Peer, PeerSetup};

const WARMUP: u64 = 2_000;

fn usage() -> String {
    let names: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
    format!("usage: peers-instr <config> <N>\n  config: {}", names.join(" | "))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (peer, n) = match args.as_slice() {
        [peer, n] => match (Peer::parse(peer), n.parse::<u64>()) {
            (Some(peer), Ok(n)) => (peer, n),
            _ => {
                eprintln!("{}", usage());
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };

    let rt = runtime();
    let exported = rt.block_on(async {
        let setup = PeerSetup::new(peer, Install::Global);
        for _ in 0..WARMUP + n {
            setup.one().await;
        }
        setup.shutdown().await
    });
    let expected = if peer.exports() { WARMUP + n } else { 0 };
    eprintln!(
        "{}: {n} requests (+{WARMUP} warm-up), {exported} spans exported",
        peer.name()
    );
    if exported != expected {
        eprintln!("{}: expected {expected} spans exported, got {exported}", peer.name());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
