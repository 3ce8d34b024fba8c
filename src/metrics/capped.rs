//! A map of metric series found by a precomputed hash, capped in size: the
//! database and client metrics keep their series in one (the request metrics
//! keep theirs inline in `metrics/mod.rs`, tuned for the request path).
//!
//! A series that exists is found under the read lock; a new one is made under
//! the write lock; beyond `max_series` every new combination is counted in one
//! overflow series instead.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::IdentityHasher;

type Map<S> = HashMap<u64, Vec<Arc<S>>, BuildHasherDefault<IdentityHasher>>;

/// Series of type `S` by hash, at most `max_series` of them, then one overflow
/// series.
#[derive(Debug)]
pub(crate) struct CappedSeries<S> {
    /// The series, and how many there are.
    series: RwLock<(Map<S>, usize)>,
    overflow: Arc<S>,
    /// Records counted in the overflow series.
    overflowed: AtomicU64,
    max_series: usize,
}

impl<S> CappedSeries<S> {
    pub(crate) fn new(max_series: usize, overflow: S) -> Self {
        CappedSeries {
            series: RwLock::new((Map::default(), 0)),
            overflow: Arc::new(overflow),
            overflowed: AtomicU64::new(0),
            max_series,
        }
    }

    /// Calls `count` on the series under `hash` that `matches` accepts, made
    /// by `make` when there is none yet (or the overflow series, beyond the cap).
    pub(crate) fn count(&self, hash: u64, matches: impl Fn(&S) -> bool, make: impl FnOnce() -> S, count: impl Fn(&S)) {
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.0.get(&hash).and_then(|v| v.iter().find(|s| matches(s))) {
                count(s);
                return;
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.0.get(&hash).and_then(|v| v.iter().find(|s| matches(s))) {
            count(s);
            return;
        }
        if map.1 >= self.max_series {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            count(&self.overflow);
            return;
        }
        let series = Arc::new(make());
        count(&series);
        map.0.entry(hash).or_default().push(series);
        map.1 += 1;
    }

    /// Every series in the order of `cmp`, the overflow series last when used.
    pub(crate) fn sorted(&self, cmp: impl Fn(&S, &S) -> std::cmp::Ordering) -> Vec<Arc<S>> {
        let mut all: Vec<Arc<S>> = {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            map.0.values().flatten().cloned().collect()
        };
        all.sort_by(|a, b| cmp(a, b));
        if self.overflowed.load(Ordering::Relaxed) > 0 {
            all.push(Arc::clone(&self.overflow));
        }
        all
    }
}
