//! The one place log lines are written: a bounded queue and a background thread.
//! A producer never waits: when the queue is full the line is dropped and
//! counted, and the writer reports the count in the log itself (and in the
//! metrics) every few seconds while it grows. A write that fails (a full disk)
//! loses the line, counts it, and is reported once per outage on stderr.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
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
    fn write_line(&mut self, line: &[u8], now: SystemTime) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().write_all(line),
            Sink::File(f) => f.write_line(line, now),
            Sink::Writer(w) => w.write_all(line),
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

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
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

/// The producers' side of the writer.
#[derive(Debug)]
pub(crate) struct LogWriter {
    tx: SyncSender<Msg>,
    pub(crate) counters: Arc<LogCounters>,
}

impl LogWriter {
    /// Starts the writer thread with a queue of `capacity` lines.
    pub(crate) fn start(sink: Sink, capacity: usize) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(LogCounters::default());
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("tower-apm-logs".into())
            .spawn(move || run(sink, &rx, &c))?;
        Ok(LogWriter { tx, counters })
    }

    /// Queues one line (ending in `\n`); drops and counts it when the queue is full.
    pub(crate) fn write(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every line queued before the call is written and flushed, at
    /// most `deadline`. Returns whether it finished in time.
    pub(crate) fn flush(&self, deadline: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        let until = Instant::now() + deadline;
        // The queue may be full: retry the hand-off until the deadline.
        let mut msg = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= until {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return true,
            }
        }
        done_rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn run(mut sink: Sink, rx: &Receiver<Msg>, counters: &LogCounters) {
    let mut state = WriterState {
        failing: false,
        unflushed: 0,
        reported_drops: 0,
        last_report: None,
    };
    loop {
        let mut pending = match rx.recv_timeout(REPORT_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                state.report_drops(&mut sink, counters);
                state.flush(&mut sink, counters);
                return;
            }
        };
        // Write everything queued now, then flush once.
        while let Some(m) = pending.take() {
            match m {
                Msg::Line(line) => state.write_one(&mut sink, line.as_bytes(), counters),
                Msg::Flush(done) => {
                    state.report_drops(&mut sink, counters);
                    state.flush(&mut sink, counters);
                    let _ = done.send(());
                }
            }
            pending = rx.try_recv().ok();
        }
        state.report_drops(&mut sink, counters);
        state.flush(&mut sink, counters);
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
        self.write_one(sink, line.finish().as_bytes(), counters);
        self.reported_drops = dropped;
        self.last_report = Some(Instant::now());
    }

    fn write_one(&mut self, sink: &mut Sink, line: &[u8], counters: &LogCounters) {
        match sink.write_line(line, SystemTime::now()) {
            Ok(()) => self.unflushed += 1,
            Err(e) => {
                counters.dropped_failed.fetch_add(1, Ordering::Relaxed);
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
