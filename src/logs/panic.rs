//! Panics as log lines: the panic hook [`Apm::init_logging`](crate::Apm::init_logging)
//! and [`Apm::init_tracing`](crate::Apm::init_tracing) install.
//!
//! Rust's default hook writes `thread '…' panicked at …:\n<message>` to stderr
//! as raw text: a message that holds a client's words (a path, a header) can
//! put a line of its choosing into the log stream. The crate's hook writes the
//! panic as one `tracing` event instead, through the installed subscriber, so
//! it is one JSON line (escaped like any other) with the trace and span ids of
//! the request it happened in.

use std::panic::PanicHookInfo;
use std::sync::Arc;
use std::time::Duration;

use super::writer::LogWriter;

/// The target of the panic's log line.
pub(crate) const TARGET: &str = "tower_apm::panic";

/// How long a panic that may end the process waits for its line to be written.
const FLUSH_DEADLINE: Duration = Duration::from_millis(500);

/// What [`Apm::init_logging`](crate::Apm::init_logging) and
/// [`Apm::init_tracing`](crate::Apm::init_tracing) (or
/// [`Apm::install_panic_hook`](crate::Apm::install_panic_hook)) do with the
/// process' panic hook. Given to
/// [`ApmBuilder::panic_hook`](crate::ApmBuilder::panic_hook).
///
/// The line: `level` `ERROR`, `target` `tower_apm::panic`, `message`
/// `panic`, `exception.type` `panic`, `exception.message` (the panic's
/// message), `code.file.path`, `code.line.number`, `code.column.number`,
/// `thread.name`, and `trace_id`/`span_id` when the panic happened while a
/// request was handled.
///
/// A hook cannot tell whether the hook it replaces is Rust's default one
/// (which writes the raw message to stderr: what this hook is for) or one of
/// your own, so it chains the previous hook only when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PanicHook {
    /// The default: every panic is one log line, and the hook installed before
    /// (normally Rust's default one) is not called; it is called only when the
    /// subscriber would drop the line (`RUST_LOG` filters out `ERROR` of
    /// `tower_apm::panic`), so that a panic is never silent.
    #[default]
    Log,
    /// The log line, then the hook installed before, always: for a hook of your
    /// own (an error reporter) set before `init_logging`. With Rust's default
    /// hook in place, the raw message reaches stderr as well: do not choose
    /// this for that. (A hook installed *after* `init_logging` that calls the
    /// one it replaced, as error reporters do, needs nothing: it runs first,
    /// then this one.)
    LogAndChain,
    /// The panic hook is left as it is.
    Keep,
}

/// Installs the hook as `mode` says. `writer`: the JSON lines' writer, flushed
/// when the panic may end the process.
pub(crate) fn install(mode: PanicHook, writer: Option<Arc<LogWriter>>) {
    if mode == PanicHook::Keep {
        return;
    }
    let chain = mode == PanicHook::LogAndChain;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !log(info) {
            // Nothing would be written: the previous hook reports it.
            previous(info);
            return;
        }
        if let Some(w) = &writer {
            if may_end_the_process() {
                let _ = w.flush(FLUSH_DEADLINE);
            }
        }
        if chain {
            previous(info);
        }
    }));
}

/// Writes the panic as one `tracing` event; whether the subscriber takes it.
fn log(info: &PanicHookInfo<'_>) -> bool {
    if !tracing::enabled!(target: TARGET, tracing::Level::ERROR) {
        return false;
    }
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let location = info.location();
    let thread = std::thread::current();
    let file = location.map(|l| l.file());
    let line = location.map(|l| l.line());
    let column = location.map(|l| l.column());
    let thread_name = thread.name().unwrap_or("<unnamed>");
    tracing::event!(
        target: TARGET,
        tracing::Level::ERROR,
        "exception.type" = "panic",
        "exception.message" = message,
        "code.file.path" = file,
        "code.line.number" = line,
        "code.column.number" = column,
        "thread.name" = thread_name,
        "panic"
    );
    true
}

/// Whether the process may end with this panic before the writer thread
/// writes its line: a panic of the main thread, or any panic when panics
/// abort. (A handler's panic on a runtime's worker thread is caught by the
/// layer: its line is written as any other, without a wait.)
fn may_end_the_process() -> bool {
    cfg!(panic = "abort") || std::thread::current().name() == Some("main")
}
