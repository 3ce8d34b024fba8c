//! The request totals over the last hour, one point every 10 s, for the status
//! page's charts and its 1 min / 5 min / 1 h figures: taken by a background
//! thread from the metrics' cumulative counts (no work on the request path).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use crate::alerts::window::Totals;
use crate::metrics::{Metrics, Series};

/// How often a point is taken.
pub(crate) const STEP: Duration = Duration::from_secs(10);
/// Points kept: one hour, and the one before it.
const POINTS: usize = 361;

/// One point: the cumulative totals at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub(crate) at: SystemTime,
    pub(crate) totals: Totals,
}

/// Adds one request series to `t`: its requests, 5xx as errors, and its
/// duration buckets.
pub(crate) fn add_series(t: &mut Totals, s: &Series) {
    let snap = s.duration.snapshot();
    t.requests += snap.count;
    if s.attrs.status.is_some_and(|c| c >= 500) {
        t.errors += snap.count;
    }
    for (b, c) in t.buckets.iter_mut().zip(&snap.counts) {
        *b += c;
    }
}

/// Every request of every series.
pub(crate) fn totals(metrics: &Metrics) -> Totals {
    let mut t = Totals::default();
    for s in metrics.series() {
        add_series(&mut t, &s);
    }
    t
}

/// The kept points.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) points: VecDeque<Point>,
}

impl History {
    pub(crate) fn push(&mut self, p: Point) {
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// What happened over the last `window` up to `now` (from the newest point
    /// at least `window` old, or the oldest), with the seconds it spans.
    pub(crate) fn over(&self, now: &Point, window: Duration) -> Option<(Totals, f64)> {
        let since = now.at.checked_sub(window)?;
        let base = self
            .points
            .iter()
            .rev()
            .find(|p| p.at <= since)
            .or_else(|| self.points.front())?;
        let secs = now.at.duration_since(base.at).ok()?.as_secs_f64();
        (secs > 0.0).then(|| (now.totals.since(&base.totals), secs))
    }
}

/// Takes a point now and every [`STEP`] on a thread of its own, until the
/// metrics are dropped.
pub(crate) fn start(metrics: &Arc<Metrics>) -> Arc<Mutex<History>> {
    let history = Arc::new(Mutex::new(History::default()));
    let weak: Weak<Metrics> = Arc::downgrade(metrics);
    let h = Arc::clone(&history);
    let first = Point {
        at: SystemTime::now(),
        totals: totals(metrics),
    };
    h.lock().unwrap_or_else(|e| e.into_inner()).push(first);
    let _ = std::thread::Builder::new()
        .name("tower-apm-status".into())
        .spawn(move || {
            loop {
                std::thread::sleep(STEP);
                let Some(metrics) = weak.upgrade() else { return };
                let p = Point {
                    at: SystemTime::now(),
                    totals: totals(&metrics),
                };
                drop(metrics);
                h.lock().unwrap_or_else(|e| e.into_inner()).push(p);
            }
        });
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(secs: u64, requests: u64) -> Point {
        Point {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            totals: Totals {
                requests,
                ..Totals::default()
            },
        }
    }

    #[test]
    fn a_window_reads_from_the_newest_point_old_enough() {
        let mut h = History::default();
        for i in 0..400u64 {
            h.push(point(i * 10, i * 5));
        }
        assert_eq!(h.points.len(), POINTS);
        let now = point(4000, 2000);
        let (t, secs) = h.over(&now, Duration::from_secs(60)).unwrap();
        // The point at 3940 s held 1970 requests.
        assert_eq!((t.requests, secs), (30, 60.0));
        // Older than what is kept: from the oldest point (390 - 360 = 39 -> 390 s).
        let (t, secs) = h.over(&now, Duration::from_secs(7200)).unwrap();
        assert_eq!((t.requests, secs), (2000 - 39 * 5, 4000.0 - 390.0));
    }
}
