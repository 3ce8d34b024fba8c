//! The one place log lines are written: a bounded queue and a background thread
//! that wakes for a batch (or every 100 ms), not for every line.
//! A producer never waits: when the queue is full the line is dropped and
//! counted, and the writer reports the count in the log itself (and in the
//! metrics) every few seconds while it grows. A write that fails (a full disk)
//! loses the line, counts it, and is reported once per outage on stderr.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::json::{JsonLine, write_timestamp};
use super::rotate::RotatingFile;

/// Where the lines go.
pub(crate) enum Sink {
    Stdout,
    File(RotatingFile),
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Stdout => f.write_str("Stdout"),
            Sink::File(r) => f.debug_tuple("File").field(r).finish(),
            Sink::Writer(_) => f.write_str("Writer"),
        }
    }
}

impl Sink {
    /// Writes whole lines, back to back in `bytes`.
    fn write_lines(&mut self, bytes: &[u8], now: SystemTime) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().write_all(bytes),
            Sink::File(f) => f.write_lines(bytes, now),
            Sink::Writer(w) => w.write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::File(f) => f.flush(),
            Sink::Writer(w) => w.flush(),
        }
    }
}

/// Counters of the log writer.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    pub(crate) written: AtomicU64,
    /// Lines refused because the queue was full.
    pub(crate) dropped_full: AtomicU64,
    /// Lines lost because writing them failed.
    pub(crate) dropped_failed: AtomicU64,
}

/// How often a growing drop count is reported in the log.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The writer wakes for this many queued lines, else every `IDLE_WAKE`: a
/// producer does not pay a wake-up (a futex call) per line.
const WAKE_AT: usize = 256;
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// A line buffer kept per thread beyond this capacity is given up.
const MAX_KEPT_LINE: usize = 16 * 1024;

thread_local! {
    /// The buffer this thread formats its lines in: it stays in this core's
    /// cache, and is copied once into the queue.
    static LINE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Queued lines, back to back in one buffer: a producer appends its line with
/// one copy under the lock, the writer takes the whole buffer (handing back the
/// one it emptied, so neither is reallocated) and writes it in one piece.
struct Queue {
    bytes: Vec<u8>,
    lines: usize,
    /// Callers of [`LogWriter::flush`] waiting for the lines queued before them.
    flushes: Vec<mpsc::Sender<()>>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    /// The most bytes of queued lines.
    max_bytes: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producers' side of the writer.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    pub(crate) counters: Arc<LogCounters>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("capacity", &self.shared.capacity)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl LogWriter {
    /// Starts the writer thread with a queue of `capacity` lines and at most
    /// `max_bytes` bytes.
    pub(crate) fn start(sink: Sink, capacity: usize, max_bytes: usize) -> io::Result<LogWriter> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                bytes: Vec::new(),
                lines: 0,
                flushes: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            max_bytes,
        });
        let counters = Arc::new(LogCounters::default());
        let (s, c) = (Arc::clone(&shared), Arc::clone(&counters));
        std::thread::Builder::new()
            .name("tower-apm-logs".into())
            .spawn(move || run(sink, &s, &c))?;
        Ok(LogWriter { shared, counters })
    }

    /// An empty buffer to build a line in: this thread's, kept between lines.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        let mut line = LINE.take();
        if line.capacity() == 0 {
            line.reserve(512);
        }
        line
    }

    /// Queues one line (ending in `\n`) built in [`LogWriter::buffer`]; drops and
    /// counts it when the queue is full.
    pub(crate) fn write(&self, mut line: Vec<u8>) {
        let mut q = self.shared.lock();
        let queued = if q.lines >= self.shared.capacity || q.bytes.len() + line.len() > self.shared.max_bytes {
            false
        } else {
            q.bytes.extend_from_slice(&line);
            q.lines += 1;
            true
        };
        let wake = queued && q.lines == WAKE_AT.min(self.shared.capacity);
        drop(q);
        if !queued {
            self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        if wake {
            self.shared.wake.notify_one();
        }
        if line.capacity() <= MAX_KEPT_LINE {
            line.clear();
            LINE.set(line);
        }
    }

    /// Waits until every line queued before the call is written and flushed, at
    /// most `deadline`. Returns whether it finished in time.
    pub(crate) fn flush(&self, deadline: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        self.shared.lock().flushes.push(done_tx);
        self.shared.wake.notify_one();
        done_rx.recv_timeout(deadline).is_ok()
    }
}

fn run(mut sink: Sink, shared: &Shared, counters: &LogCounters) {
    let mut state = WriterState {
        failing: false,
        unflushed: 0,
        reported_drops: 0,
        last_report: None,
    };
    let mut batch: Vec<u8> = Vec::new();
    let mut flushes: Vec<mpsc::Sender<()>> = Vec::new();
    loop {
        let (lines, closed) = {
            let mut q = shared.lock();
            if q.lines == 0 && q.flushes.is_empty() && !q.closed {
                q = shared
                    .wake
                    .wait_timeout(q, IDLE_WAKE)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            batch.clear();
            std::mem::swap(&mut q.bytes, &mut batch);
            std::mem::swap(&mut q.flushes, &mut flushes);
            (std::mem::take(&mut q.lines), q.closed)
        };
        if lines > 0 {
            state.write(&mut sink, &batch, lines as u64, counters);
        }
        state.report_drops(&mut sink, counters);
        state.flush(&mut sink, counters);
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if closed && shared.lock().lines == 0 {
            return;
        }
    }
}

struct WriterState {
    failing: bool,
    /// Lines handed to the sink since its last flush: written once it succeeds.
    unflushed: u64,
    reported_drops: u64,
    last_report: Option<Instant>,
}

impl WriterState {
    /// Writes a warning into the log itself when lines were dropped since the
    /// last one: at once the first time, then at most every `REPORT_EVERY`.
    fn report_drops(&mut self, sink: &mut Sink, counters: &LogCounters) {
        let dropped = counters.dropped_full.load(Ordering::Relaxed) + counters.dropped_failed.load(Ordering::Relaxed);
        if dropped <= self.reported_drops || self.last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        let mut line = JsonLine::new();
        line.raw_field("timestamp", |s| write_timestamp(SystemTime::now(), s));
        line.str_field("level", "WARN");
        line.str_field("target", "tower_apm");
        line.str_field(
            "message",
            "log lines dropped: the log output could not keep up, or could not be written",
        );
        line.u64_field("dropped_total", dropped);
        line.u64_field("dropped_since_last_report", dropped - self.reported_drops);
        self.write(sink, &line.finish(), 1, counters);
        self.reported_drops = dropped;
        self.last_report = Some(Instant::now());
    }

    /// Writes `lines` whole lines, back to back in `bytes`.
    fn write(&mut self, sink: &mut Sink, bytes: &[u8], lines: u64, counters: &LogCounters) {
        match sink.write_lines(bytes, SystemTime::now()) {
            Ok(()) => self.unflushed += lines,
            Err(e) => {
                counters.dropped_failed.fetch_add(lines, Ordering::Relaxed);
                self.failed(&e);
            }
        }
    }

    fn flush(&mut self, sink: &mut Sink, counters: &LogCounters) {
        let lines = std::mem::take(&mut self.unflushed);
        match sink.flush() {
            Ok(()) => {
                counters.written.fetch_add(lines, Ordering::Relaxed);
                if self.failing && lines > 0 {
                    self.failing = false;
                    eprintln!("tower-apm: log writing recovered");
                }
            }
            Err(e) => {
                counters.dropped_failed.fetch_add(lines, Ordering::Relaxed);
                self.failed(&e);
            }
        }
    }

    /// Says so on stderr once per outage (the log itself cannot be written).
    fn failed(&mut self, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            eprintln!("tower-apm: cannot write log lines ({e}); dropping and counting them until it works again");
        }
    }
}
