//! Sliding windows over cumulative request counts: what a rule reads is the
//! difference between the counts now and the counts one window ago, as
//! Prometheus' `increase` reads a counter.

use std::collections::VecDeque;
use std::time::Duration;

use crate::metrics::DURATION_BOUNDS_S;

/// Buckets of the duration histogram: the 14 advised bounds and `+Inf`.
pub(crate) const BUCKETS: usize = DURATION_BOUNDS_S.len() + 1;

/// Cumulative counts of the requests one rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Requests per duration bucket (not cumulative).
    pub(crate) buckets: [u64; BUCKETS],
}

impl Totals {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Totals) -> Totals {
        let mut buckets = [0; BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets,
        }
    }

    /// The `q` quantile of the durations, in seconds, interpolated linearly
    /// within its bucket as Prometheus' `histogram_quantile` does (the first
    /// bucket starts at zero; a quantile in `+Inf` is the highest finite bound).
    /// `None` without requests.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            let upto = below + n;
            if upto as f64 >= rank && n > 0 {
                let Some(&upper) = DURATION_BOUNDS_S.get(i) else {
                    return Some(DURATION_BOUNDS_S[DURATION_BOUNDS_S.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { DURATION_BOUNDS_S[i - 1] };
                return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
            }
            below = upto;
        }
        Some(DURATION_BOUNDS_S[DURATION_BOUNDS_S.len() - 1])
    }
}

/// Snapshots of one rule's totals, one per evaluation, kept as far back as its
/// window needs: memory is bounded by window / interval.
#[derive(Debug)]
pub(crate) struct Ring {
    window: Duration,
    /// Frames closer together than this are not kept (long windows keep about
    /// a thousand frames, whatever the interval).
    step: Duration,
    /// (time since the engine started, totals then), oldest first.
    frames: VecDeque<(Duration, Totals)>,
}

impl Ring {
    /// A ring whose first frame is `start` at time zero (the counts when the
    /// engine started).
    pub(crate) fn new(window: Duration, start: Totals) -> Ring {
        Ring::with_step(window, Duration::ZERO, start)
    }

    /// A ring that keeps a frame at most every `step`: the window's start is then
    /// known to within `step`.
    pub(crate) fn with_step(window: Duration, step: Duration, start: Totals) -> Ring {
        let mut frames = VecDeque::new();
        frames.push_back((Duration::ZERO, start));
        Ring { window, step, frames }
    }

    /// The increase over the window ending `now`, and the time it spans; then
    /// keeps `current` as the frame of `now`.
    ///
    /// The increase is measured from the newest frame at or before `now - window`,
    /// as Prometheus 2 reads a range `[now - window, now]` (both ends included):
    /// with one frame per evaluation interval the window spans exactly `window`,
    /// and ratios (error rate, quantiles) are the ones Prometheus computes from the
    /// same samples. (Prometheus 3 leaves the start out, one sample fewer.) While
    /// the history is shorter than the window, everything since the first frame.
    pub(crate) fn advance(&mut self, now: Duration, current: Totals) -> Option<(Totals, Duration)> {
        let from = now.saturating_sub(self.window);
        // Frames before the newest one at or before `from` are never read again.
        while self.frames.len() > 1 && self.frames[1].0 <= from {
            self.frames.pop_front();
        }
        let base = self.frames.front().copied();
        if self
            .frames
            .back()
            .is_none_or(|(t, _)| *t < now && now - *t >= self.step)
        {
            self.frames.push_back((now, current));
        }
        let (t, totals) = base?;
        let span = now.saturating_sub(t);
        (!span.is_zero()).then(|| (current.since(&totals), span))
    }

    /// Frames kept (for the memory bound's test).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64) -> Totals {
        Totals {
            requests,
            errors,
            buckets: [0; BUCKETS],
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn increase_is_measured_against_the_frame_one_window_ago() {
        let mut ring = Ring::new(secs(60), totals(0, 0));
        // 10 requests a second, one error a second from t=30.
        let mut got = Vec::new();
        for t in (15..=120u64).step_by(15) {
            let errors = t.saturating_sub(30);
            got.push(ring.advance(secs(t), totals(t * 10, errors)));
        }
        // At t=15 the history is 15 s long: the increase over those 15 s.
        assert_eq!(got[0], Some((totals(150, 0), secs(15))));
        // At t=60, the window starts at 0: everything so far.
        assert_eq!(got[3], Some((totals(600, 30), secs(60))));
        // At t=120, the window starts at 60.
        assert_eq!(got[7], Some((totals(600, 60), secs(60))));
        assert!(ring.len() <= 6, "frames kept: {}", ring.len());
    }

    #[test]
    fn a_long_window_keeps_a_bounded_number_of_frames() {
        let day = secs(86_400);
        let mut ring = Ring::with_step(30 * day, 30 * day / 1000, totals(0, 0));
        for i in 1..=(40 * 86_400 / 15) {
            ring.advance(secs(i * 15), totals(i, 0));
        }
        assert!(ring.len() <= 1002, "frames kept: {}", ring.len());
        // The window's start is known to within one step.
        let now = secs(40 * 86_400 + 15);
        let (t, span) = ring.advance(now, totals(40 * 86_400 / 15 + 1, 0)).unwrap();
        assert!(span >= 30 * day && span <= 30 * day + 30 * day / 1000, "{span:?}");
        assert_eq!(t.requests, span.as_secs() / 15);
    }

    #[test]
    fn the_first_evaluation_at_time_zero_has_no_increase() {
        let mut ring = Ring::new(secs(60), totals(0, 0));
        assert_eq!(ring.advance(Duration::ZERO, totals(5, 0)), None);
    }

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        let mut t = totals(0, 0);
        // 100 requests in (0.1, 0.25], none elsewhere.
        t.buckets[6] = 100;
        assert_eq!(t.quantile(0.5), Some(0.1 + 0.15 * 0.5));
        assert!((t.quantile(0.95).unwrap() - (0.1 + 0.15 * 0.95)).abs() < 1e-12);
        // 90 fast (<= 5 ms), 10 slow in (1, 2.5]: p95 is in the slow bucket.
        let mut t = totals(0, 0);
        t.buckets[0] = 90;
        t.buckets[10] = 10;
        assert!((t.quantile(0.95).unwrap() - (1.0 + 1.5 * 0.5)).abs() < 1e-12);
        assert!((t.quantile(0.5).unwrap() - 0.005 * 50.0 / 90.0).abs() < 1e-12);
        // Beyond the last bound: the highest finite bound.
        let mut t = totals(0, 0);
        t.buckets[BUCKETS - 1] = 3;
        assert_eq!(t.quantile(0.99), Some(10.0));
        assert_eq!(totals(0, 0).quantile(0.5), None);
    }
}
