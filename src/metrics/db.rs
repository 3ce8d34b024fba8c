//! `db.client.operation.duration`: one histogram per database, operation, table,
//! server and `error.type`; and the slow queries among them. Read by the
//! Prometheus endpoint and the OTLP push with the request metrics.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Histogram, IdentityHasher};
use crate::record::DbRecord;

/// The bucket boundaries (seconds) the database semantic conventions advise.
pub(crate) const DB_BOUNDS_S: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
const DB_BOUNDS_NS: [u64; 9] = [
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The attributes of one series. Every value comes from the application's
/// code (the database it configured, its statements), none from a client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DbAttrs {
    pub(crate) system: Arc<str>,
    pub(crate) operation: Option<Arc<str>>,
    pub(crate) collection: Option<Arc<str>>,
    pub(crate) namespace: Option<Arc<str>>,
    pub(crate) server: Option<(Arc<str>, Option<u16>)>,
    pub(crate) error_type: Option<Arc<str>>,
    /// The overflow series: every other attribute is empty.
    pub(crate) overflow: bool,
}

impl DbAttrs {
    fn matches(&self, r: &DbRecord) -> bool {
        !self.overflow
            && *self.system == *r.config.system
            && same(&self.operation, &r.shape.operation)
            && same(&self.collection, &r.shape.collection)
            && self.error_type.as_deref() == r.error_type.as_deref()
            && same(&self.namespace, &r.config.namespace)
            && self.server == r.config.server
    }

    fn of(r: &DbRecord) -> DbAttrs {
        DbAttrs {
            system: Arc::clone(&r.config.system),
            operation: r.shape.operation.clone(),
            collection: r.shape.collection.clone(),
            namespace: r.config.namespace.clone(),
            server: r.config.server.clone(),
            error_type: r.error_type.as_deref().map(Arc::from),
            overflow: false,
        }
    }
}

/// Equal strings: the same shared one (the usual case: the series keeps the
/// query shape's own), or the same text.
fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// One series: its durations and slow queries.
#[derive(Debug)]
pub(crate) struct DbSeries {
    pub(crate) attrs: DbAttrs,
    pub(crate) duration: Histogram,
    pub(crate) slow: AtomicU64,
}

impl DbSeries {
    fn new(attrs: DbAttrs) -> DbSeries {
        DbSeries {
            attrs,
            duration: Histogram::new(&DB_BOUNDS_NS),
            slow: AtomicU64::new(0),
        }
    }
}

/// The shape's hash (operation and table) with the `error.type` folded in;
/// the database's own fields are compared, not hashed.
fn hash(r: &DbRecord) -> u64 {
    let mut h = r.shape.hash;
    if let Some(e) = &r.error_type {
        for b in e.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

type Map = HashMap<u64, Vec<Arc<DbSeries>>, BuildHasherDefault<IdentityHasher>>;

/// Every database metric of one `Apm`.
#[derive(Debug)]
pub(crate) struct DbMetrics {
    series: RwLock<(Map, usize)>,
    overflow: Arc<DbSeries>,
    max_series: usize,
}

impl DbMetrics {
    pub(crate) fn new(max_series: usize) -> DbMetrics {
        DbMetrics {
            series: RwLock::new((Map::default(), 0)),
            overflow: Arc::new(DbSeries::new(DbAttrs {
                system: "".into(),
                operation: None,
                collection: None,
                namespace: None,
                server: None,
                error_type: None,
                overflow: true,
            })),
            max_series,
        }
    }

    /// Counts one query.
    pub(crate) fn record(&self, r: &DbRecord, slow: bool) {
        let count = |s: &DbSeries| {
            s.duration
                .observe(u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX));
            if slow {
                s.slow.fetch_add(1, Ordering::Relaxed);
            }
        };
        let h = hash(r);
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.0.get(&h).and_then(|v| v.iter().find(|s| s.attrs.matches(r))) {
                count(s);
                return;
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.0.get(&h).and_then(|v| v.iter().find(|s| s.attrs.matches(r))) {
            count(s);
            return;
        }
        if map.1 >= self.max_series {
            count(&self.overflow);
            return;
        }
        let series = Arc::new(DbSeries::new(DbAttrs::of(r)));
        count(&series);
        map.0.entry(h).or_default().push(series);
        map.1 += 1;
    }

    /// Every series, sorted by attributes (the overflow series last, when used).
    pub(crate) fn series(&self) -> Vec<Arc<DbSeries>> {
        let mut all: Vec<Arc<DbSeries>> = {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            map.0.values().flatten().cloned().collect()
        };
        all.sort_by(|a, b| a.attrs.cmp(&b.attrs));
        if self.overflow.duration.snapshot().count > 0 {
            all.push(Arc::clone(&self.overflow));
        }
        all
    }
}
