//! `db.client.operation.duration`: one histogram per database, operation, table,
//! server and `error.type`; and the slow queries among them. Read by the
//! Prometheus endpoint and the OTLP push with the request metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Histogram;
use super::capped::CappedSeries;
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
    let mut h = crate::fnv::Fnv1a::resume(r.shape.hash);
    if let Some(e) = &r.error_type {
        h.write(e.as_bytes());
    }
    h.finish()
}

/// Every database metric of one `Apm`.
#[derive(Debug)]
pub(crate) struct DbMetrics {
    series: CappedSeries<DbSeries>,
}

impl DbMetrics {
    pub(crate) fn new(max_series: usize) -> DbMetrics {
        DbMetrics {
            series: CappedSeries::new(
                max_series,
                DbSeries::new(DbAttrs {
                    system: "".into(),
                    operation: None,
                    collection: None,
                    namespace: None,
                    server: None,
                    error_type: None,
                    overflow: true,
                }),
            ),
        }
    }

    /// Counts one query.
    pub(crate) fn record(&self, r: &DbRecord, slow: bool) {
        let nanos = u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX);
        self.series.count(
            hash(r),
            |s| s.attrs.matches(r),
            || DbSeries::new(DbAttrs::of(r)),
            |s| {
                s.duration.observe(nanos);
                if slow {
                    s.slow.fetch_add(1, Ordering::Relaxed);
                }
            },
        );
    }

    /// Every series, sorted by attributes (the overflow series last, when used).
    pub(crate) fn series(&self) -> Vec<Arc<DbSeries>> {
        self.series.sorted(|a, b| a.attrs.cmp(&b.attrs))
    }
}
