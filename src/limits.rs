//! Bounds on what the crate keeps: client-controlled values are cut to a length
//! before they are queued, and every queue counts the bytes it holds as well as
//! its entries.
//!
//! A client chooses the size of its path, query, `User-Agent`, `Host`,
//! forwarding headers and the strings a handler reports in security events;
//! hyper accepts about 400 KiB of headers. Kept whole in queues bounded only in
//! entries, a flood of such requests against a stalled log reader or a silent
//! collector grows the process by gigabytes. Cut to the attribute value length
//! limit (the OpenTelemetry `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, default
//! [`DEFAULT_VALUE_LIMIT`]) and held in queues with a byte budget, it cannot.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The attribute value length limit when neither
/// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` nor `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`
/// is set: 4 KiB, above what browsers and CDNs accept in a URL or a header value
/// that a service means to serve.
pub(crate) const DEFAULT_VALUE_LIMIT: usize = 4096;

/// The bytes the span queue may hold: 2 KiB for each of its
/// `OTEL_BSP_MAX_QUEUE_SIZE` entries (a span of ordinary size takes well under
/// that), and at least 16 MiB. Spans with long values fill it sooner; beyond
/// it they are dropped and counted like spans beyond the entry limit.
pub(crate) fn span_queue_bytes(entries: usize) -> usize {
    entries.saturating_mul(2048).max(16 << 20)
}

/// The bytes the log writer's queue may hold by default (8 MiB).
pub(crate) const LOG_QUEUE_BYTES: usize = 8 << 20;

/// The bytes the security monitor's queue may hold (4 MiB).
pub(crate) const SECURITY_QUEUE_BYTES: usize = 4 << 20;

/// The bytes the notification queue may hold (1 MiB).
pub(crate) const NOTIFY_QUEUE_BYTES: usize = 1 << 20;

/// What ends a value that was cut (within the limit): an ellipsis.
pub(crate) const CUT_MARK: &str = "\u{2026}";

/// The length of `bytes` cut to at most `limit`, less room for [`CUT_MARK`],
/// and backed off to a UTF-8 character boundary; `None` when nothing needs
/// cutting. The limit counts bytes, so a value is never longer than `limit`
/// characters (the OpenTelemetry limit counts characters).
pub(crate) fn cut_len(bytes: &[u8], limit: usize) -> Option<usize> {
    if bytes.len() <= limit {
        return None;
    }
    let mut end = if limit >= CUT_MARK.len() {
        limit - CUT_MARK.len()
    } else {
        limit
    };
    // A continuation byte (0b10xx_xxxx) is inside a character: back off to
    // its start, at most three bytes.
    while end > 0 && bytes.get(end).is_some_and(|b| b & 0xc0 == 0x80) {
        end -= 1;
    }
    Some(end)
}

/// `s` cut to at most `limit` bytes, ending in [`CUT_MARK`] when it was cut.
pub(crate) fn cut_string(s: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    match cut_len(s.as_bytes(), limit) {
        None => std::borrow::Cow::Borrowed(s),
        Some(end) => {
            let mut out = String::with_capacity(end + CUT_MARK.len());
            out.push_str(&s[..end]);
            if limit >= CUT_MARK.len() {
                out.push_str(CUT_MARK);
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// Cuts `s` in place to at most `limit` bytes, ending in [`CUT_MARK`].
pub(crate) fn cut_in_place(s: &mut String, limit: usize) {
    if let Some(end) = cut_len(s.as_bytes(), limit) {
        s.truncate(end);
        if limit >= CUT_MARK.len() {
            s.push_str(CUT_MARK);
        }
        s.shrink_to_fit();
    }
}

/// The bytes a queue holds, against a cap. A producer reserves an entry's size
/// before it queues the entry and gives up (the entry is dropped and counted)
/// when the cap would be passed; the consumer releases what it took.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    cap: usize,
}

impl ByteBudget {
    pub(crate) fn new(cap: usize) -> Self {
        ByteBudget {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes `n` bytes of the budget; `false` (and nothing taken) when they do
    /// not fit. An entry larger than the whole cap never fits.
    pub(crate) fn try_reserve(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.cap {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back `n` bytes taken by [`ByteBudget::try_reserve`].
    pub(crate) fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// The bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_over_the_limit_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(cut_string("short", 10), "short");
        let cut = cut_string("abcdefghij-klmnop", 10);
        assert_eq!(cut, "abcdefg\u{2026}");
        assert_eq!(cut.len(), 10);
        // "é" is two bytes: never split.
        let cut = cut_string("ééééééé", 8);
        assert!(cut.len() <= 8, "{cut}");
        assert_eq!(cut, "éé\u{2026}");
        let mut s = "x".repeat(100_000);
        cut_in_place(&mut s, 4096);
        assert_eq!(s.len(), 4096);
        assert!(s.ends_with(CUT_MARK));
        // A limit too small for the mark cuts without it.
        assert_eq!(cut_string("abcdef", 2), "ab");
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_back_what_was_released() {
        let b = ByteBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert_eq!(b.used(), 60);
        assert!(b.try_reserve(40));
        b.release(60);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(1_000));
        assert_eq!(b.used(), 100);
    }
}
