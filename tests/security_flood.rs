//! A flood of 1,000,000 distinct client addresses through the layer: the
//! security detectors' memory stays under its cap (measured by a counting
//! allocator: the heap does not grow with the addresses), an attacker inside the
//! flood is still found, and the saturated detectors say so once instead of
//! naming addresses they cannot tell apart.
//!
//! Its own test binary: the allocator counts this process only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::{Request, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_apm::security::{BruteForce, Security, SecurityEvent, TrafficSpike};
use tower_apm::{Apm, LogOutput};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size() as isize, Relaxed) + layout.size() as isize;
        PEAK.fetch_max(live, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CAP: usize = 1 << 20;
const FLOOD: u32 = 1_000_000;

#[tokio::test]
async fn a_million_distinct_addresses_keep_the_detectors_under_their_memory_cap() {
    let dir = std::env::temp_dir().join(format!("tower-apm-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let before_apm = LIVE.load(Relaxed);
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        // Small queues, so what they hold at their fullest is small beside the
        // detectors: this test is about the detectors.
        .logs(LogOutput::file(&log).queue_capacity(256))
        .security(
            Security::new()
                .memory_cap(CAP)
                .queue_capacity(256)
                .brute_force(BruteForce::default().window(Duration::from_secs(3600)))
                .traffic_spike(TrafficSpike::default().window(Duration::from_secs(3600))),
        )
        .build()
        .unwrap();
    // Every request of the flood logs in and fails, as a credential stuffing
    // run from a botnet would; one address fails 20 times among them.
    let svc = apm.layer().layer(tower::service_fn(|req: Request<Body>| async move {
        let user = req.uri().path().trim_start_matches('/').to_owned();
        Ok::<_, Infallible>((SecurityEvent::login_failed(&user), StatusCode::UNAUTHORIZED).into_response())
    }));
    let request = |ip: IpAddr, user: &str| {
        let mut req = Request::post(format!("/{user}")).body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::new(ip, 40000)));
        req
    };
    let attacker = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
    // Before the counters fill: the attacker's 10th failure is detected.
    for _ in 0..10 {
        let _ = svc.clone().oneshot(request(attacker, "root")).await.unwrap();
    }
    let start_flood = LIVE.load(Relaxed);
    PEAK.store(start_flood, Relaxed);
    let mut svc = svc;
    // Two halves: whatever the first half settles (buffers reaching their
    // working size), the second half must not add to.
    let mut after_half = [0isize; 2];
    for (half, after) in after_half.iter_mut().enumerate() {
        for i in 0..FLOOD / 2 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + half as u32 * (FLOOD / 2) + i));
            let res = svc.ready().await.unwrap().call(request(ip, "user")).await.unwrap();
            drop(res);
        }
        assert!(apm.flush_logs(Duration::from_secs(60)).await);
        *after = LIVE.load(Relaxed) - start_flood;
    }
    let peak_growth = PEAK.load(Relaxed) - start_flood;

    let status = apm
        .alerts_router()
        .oneshot(Request::get("/alerts").body(Body::empty()).unwrap());
    let body = axum::body::to_bytes(status.await.unwrap().into_body(), 1 << 20)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let detector_bytes = status["security"]["detector_bytes"].as_u64().unwrap() as usize;
    let built = before_apm.abs_diff(LIVE.load(Relaxed));
    let stats = apm.stats();
    eprintln!(
        "cap {CAP}, detectors {detector_bytes} B; heap growth over {FLOOD} addresses: peak {peak_growth} B, \
         after the first half {} B, after the second {} B; \
         events {} (dropped {}), detections {}",
        after_half[0], after_half[1], stats.security_events, stats.security_events_dropped, stats.security_detections
    );
    assert!(detector_bytes <= CAP && detector_bytes > CAP / 2, "{detector_bytes}");
    // The counters were all allocated at start: the second 500,000 addresses
    // add nothing, and at its peak (queued events and log buffers, all
    // bounded) the flood took less than the cap again.
    assert!(after_half[1] - after_half[0] < (16 << 10), "{after_half:?}");
    assert!(peak_growth < CAP as isize, "peak growth {peak_growth} B");
    assert!(built > detector_bytes, "{built} {detector_bytes}");

    // The detections (the status endpoint keeps the latest 50): the attacker
    // named once, and "user" failing from everywhere; the flood is a spike of
    // the whole service; the per-address counters saturate, reported once per
    // window, and name nobody from the flood.
    let named: Vec<&str> = status["security"]["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(named[0], "malicious_brute_force:192.0.2.66,root", "{named:?}");
    assert!(named.contains(&"authn_login_fail_max:user,10"), "{named:?}");
    assert!(named.contains(&"sys_traffic_spike:5000"), "{named:?}");
    assert!(named.contains(&"sys_detector_saturated:brute_force"), "{named:?}");
    assert!(
        named
            .iter()
            .all(|e| !e.starts_with("malicious_") || e.contains("192.0.2.66")),
        "{named:?}"
    );
    assert_eq!(
        named
            .iter()
            .filter(|e| e.starts_with("sys_detector_saturated:brute_force"))
            .count(),
        1
    );
    assert_eq!(stats.security_detections as usize, named.len());
    let _ = &log;
    let _ = std::fs::remove_dir_all(dir);
}
