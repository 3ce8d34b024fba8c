//! The configurations compared in benches/peers do the work their names say: every
//! request's span reaches the exporter, and the access-log configurations write one
//! line per request. (A peer quietly dropping spans or lines would look fast.)

use tower_apm_peers::common::runtime;
use tower_apm_peers::{Install, Peer, PeerSetup, access_log_path};

const REQUESTS: u64 = 300;

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn every_configuration_exports_one_span_per_request_and_logs_one_line_per_request() {
    let rt = runtime();
    for peer in Peer::ALL {
        let setup = {
            let _enter = rt.enter();
            PeerSetup::new(peer, Install::Scoped)
        };
        let exported = {
            let _scope = setup.enter();
            rt.block_on(async {
                for _ in 0..REQUESTS {
                    setup.one().await;
                }
                setup.shutdown().await
            })
        };
        let expected = if peer.exports() { REQUESTS } else { 0 };
        assert_eq!(exported, expected, "{}: spans exported", peer.name());

        let log = match peer {
            Peer::TowerApm => setup
                .ours
                .as_ref()
                .and_then(|s| s.access_log_path())
                .map(std::path::Path::to_path_buf),
            Peer::StitchedAccessLog => Some(access_log_path(peer)),
            _ => None,
        };
        // Dropping the setup stops tracing-appender's writer after a flush.
        drop(setup);
        if let Some(path) = log {
            assert_eq!(
                lines(&path),
                REQUESTS as usize,
                "{}: access-log lines in {}",
                peer.name(),
                path.display()
            );
            let _ = std::fs::remove_file(path);
        }
    }
}
