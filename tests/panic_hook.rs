//! `PanicHook::LogAndChain`: a hook of the user's installed before
//! `init_logging` still runs, after the panic's JSON line. (The default,
//! `PanicHook::Log`, in a real process: `tests/panic_log.rs`.)

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_apm::{Apm, LogOutput, PanicHook};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_users_own_hook_is_chained_after_the_line_when_asked() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let buffer = Buffer::default();
    let seen = buffer.clone();
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(LogOutput::writer(buffer))
        .panic_hook(PanicHook::LogAndChain)
        .build()
        .unwrap();
    // The user's hook, set before: an error reporter would be here.
    std::panic::set_hook(Box::new(|_| {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    apm.init_logging().unwrap();
    let joined = std::thread::Builder::new()
        .name("worker".into())
        .spawn(|| panic!("bad \"input\"\nsecond line"))
        .unwrap()
        .join();
    assert!(joined.is_err());
    assert_eq!(CALLS.load(Ordering::SeqCst), 1, "the user's hook ran once");
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let text = String::from_utf8(seen.0.lock().unwrap().clone()).unwrap();
    let panics: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::panic")
        .collect();
    assert_eq!(panics.len(), 1, "{text}");
    assert_eq!(panics[0]["exception.message"], "bad \"input\"\nsecond line");
    assert_eq!(panics[0]["thread.name"], "worker");
    assert!(
        panics[0].get("trace_id").is_none(),
        "no request, no trace: {}",
        panics[0]
    );
}
