//! What every query of one kind shares (its operation, table, statement, span
//! name and sanitized text), made once and then shared by reference: a query
//! only looks its shape up.
//!
//! Measured: reading the statement, copying it and formatting the span name per
//! query came to over 8,000 instructions a query, against a 3,000 budget. Shapes
//! are cached per thread (no lock on the request path) in a small direct-mapped
//! table keyed by where the strings are (statements are almost always string
//! literals), checked against their content.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::StringValue;

use super::sanitize;

/// One kind of query.
#[derive(Debug)]
pub(crate) struct QueryShape {
    pub(crate) operation: Option<Arc<str>>,
    pub(crate) collection: Option<Arc<str>>,
    /// As the application wrote it: never leaves the process as it is.
    pub(crate) statement: Option<Box<str>>,
    /// `{operation} {table}` or `{operation}`; `None` without an operation.
    pub(crate) name: Option<Cow<'static, str>>,
    /// FNV-1a of the operation and the table, for the metrics' lookup.
    pub(crate) hash: u64,
    query_text: OnceLock<Option<StringValue>>,
    derived: bool,
}

impl QueryShape {
    fn new(operation: Option<&str>, collection: Option<&str>, statement: Option<&str>, derived: bool) -> QueryShape {
        let mut fnv = crate::fnv::Fnv1a::new();
        for part in [operation.unwrap_or(""), "\u{0}", collection.unwrap_or("")] {
            fnv.write(part.as_bytes());
        }
        let h = fnv.finish();
        QueryShape {
            operation: operation.map(Arc::from),
            collection: collection.map(Arc::from),
            statement: statement.map(Box::from),
            name: operation.map(|op| span_name(op, collection)),
            hash: h,
            query_text: OnceLock::new(),
            derived,
        }
    }

    /// `db.query.text`: the statement sanitized, the first time it is asked for.
    pub(crate) fn query_text(&self) -> Option<&StringValue> {
        self.query_text
            // Shared (reference-counted), so each span's copy is not another allocation.
            .get_or_init(|| {
                self.statement
                    .as_deref()
                    .map(|s| Arc::<str>::from(sanitize::sanitize(s)).into())
            })
            .as_ref()
    }

    fn matches(
        &self,
        operation: Option<&str>,
        collection: Option<&str>,
        statement: Option<&str>,
        derived: bool,
    ) -> bool {
        self.derived == derived
            && self.statement.as_deref() == statement
            && (derived || (self.operation.as_deref() == operation && self.collection.as_deref() == collection))
    }
}

/// Span names made once and kept for the process (as route names are): at most
/// this many; past it a name is allocated per span.
const MAX_NAMES: usize = 1024;
/// Operation and table to their leaked span name.
type Names = HashMap<(Box<str>, Box<str>), &'static str>;
static NAMES: Mutex<Option<Names>> = Mutex::new(None);

fn span_name(operation: &str, collection: Option<&str>) -> Cow<'static, str> {
    let collection = collection.unwrap_or("");
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(HashMap::new);
    if let Some(name) = names.get(&(operation.into(), collection.into())) {
        return Cow::Borrowed(name);
    }
    let name = if collection.is_empty() {
        operation.to_owned()
    } else {
        format!("{operation} {collection}")
    };
    if names.len() >= MAX_NAMES {
        return Cow::Owned(name);
    }
    let name: &'static str = Box::leak(name.into_boxed_str());
    names.insert((operation.into(), collection.into()), name);
    Cow::Borrowed(name)
}

/// Slots of each thread's table.
const SLOTS: usize = 64;

type Slot = Option<([(usize, usize); 3], Arc<QueryShape>)>;

thread_local! {
    static SHAPES: RefCell<[Slot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

fn place(s: Option<&str>) -> (usize, usize) {
    s.map_or((0, 0), |s| (s.as_ptr() as usize, s.len()))
}

/// The shape of a query given by its parts (`derived`: the operation and table
/// read from `statement`).
pub(crate) fn shape(
    operation: Option<&str>,
    collection: Option<&str>,
    statement: Option<&str>,
    derived: bool,
) -> Arc<QueryShape> {
    let key = [place(operation), place(collection), place(statement)];
    let mut h = if derived { 1u64 } else { 0 };
    for (p, l) in key {
        h = (h ^ p as u64 ^ (l as u64).rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let slot = (h >> 58) as usize % SLOTS;
    SHAPES.with(|cell| {
        let mut table = cell.borrow_mut();
        if let Some((k, shape)) = &table[slot] {
            if *k == key && shape.matches(operation, collection, statement, derived) {
                return Arc::clone(shape);
            }
        }
        let shape = Arc::new(if derived {
            let statement = statement.unwrap_or("");
            let (op, table_name) = sanitize::summary(statement);
            QueryShape::new(op, table_name, Some(statement), true)
        } else {
            QueryShape::new(operation, collection, statement, false)
        });
        table[slot] = Some((key, Arc::clone(&shape)));
        shape
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_statement_shares_one_shape_and_a_changed_one_does_not() {
        let sql = "SELECT * FROM users WHERE id = 1";
        let a = shape(None, None, Some(sql), true);
        let b = shape(None, None, Some(sql), true);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.name.as_deref(), Some("SELECT users"));
        assert_eq!(
            a.query_text().map(|t| t.as_str()),
            Some("SELECT * FROM users WHERE id = ?")
        );
        // The same place in memory, other content (a reused buffer): a new shape.
        let mut buf = String::from("SELECT * FROM a");
        let first = shape(None, None, Some(&buf), true);
        buf.replace_range(14.., "b");
        let second = shape(None, None, Some(&buf), true);
        assert_eq!(first.collection.as_deref(), Some("a"));
        assert_eq!(second.collection.as_deref(), Some("b"));
        // Named by hand: what was given, not what the statement says.
        let c = shape(Some("CALL"), Some("proc"), Some(sql), false);
        assert_eq!(c.name.as_deref(), Some("CALL proc"));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
