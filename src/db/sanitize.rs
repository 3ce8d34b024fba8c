//! SQL text made safe to leave the process, and the operation and table a
//! statement names.
//!
//! Written here, not taken from a crate: the SQL parser crates build a full
//! syntax tree (and fail on dialect they do not know), where this needs one pass
//! that never fails and only has to know where literals are.

/// `statement` with every literal replaced by `?`: quoted strings (`'...'` with
/// `''` inside, `E'...'` with backslash escapes), dollar-quoted strings
/// (`$$...$$`, `$tag$...$tag$`), numbers and `TRUE`/`FALSE`/`NULL` stay as
/// keywords. Comments are dropped and runs of whitespace become one space.
/// Quoted identifiers (`"..."`) and placeholders (`$1`, `?`) are kept. An
/// unterminated string swallows the rest: what follows cannot be told apart from
/// its content.
pub(crate) fn sanitize(statement: &str) -> String {
    let b = statement.as_bytes();
    let mut out = String::with_capacity(statement.len());
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, s: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(s);
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p + 1);
                space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find(b, i + 2, b"*/").map_or(b.len(), |p| p + 2);
                space = true;
            }
            b'\'' => {
                i = end_of_quoted(b, i + 1, false);
                push(&mut out, "?", &mut space);
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') && !ident_before(b, i) => {
                i = end_of_quoted(b, i + 2, true);
                push(&mut out, "?", &mut space);
            }
            b'"' => {
                let end = b[i + 1..]
                    .iter()
                    .position(|&x| x == b'"')
                    .map_or(b.len(), |p| i + 1 + p + 1);
                push(&mut out, &statement[i..end], &mut space);
                i = end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    i = find(b, tag_end, tag).map_or(b.len(), |p| p + tag.len());
                    push(&mut out, "?", &mut space);
                }
                None => {
                    // A placeholder: `$` and its digits.
                    let end = i + 1 + b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
                    push(&mut out, &statement[i..end], &mut space);
                    i = end;
                }
            },
            b'0'..=b'9' if !ident_before(b, i) => {
                let mut end = i;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'.' || b[end] == b'_') {
                    end += 1;
                }
                push(&mut out, "?", &mut space);
                i = end;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !ident_before(b, i) => {
                let mut end = i + 1;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'.') {
                    end += 1;
                }
                push(&mut out, "?", &mut space);
                i = end;
            }
            _ => {
                // A word or one symbol, as it is.
                let end = if is_word(c) {
                    i + b[i..].iter().take_while(|&&x| is_word(x)).count()
                } else {
                    i + utf8_len(c)
                };
                let end = end.min(b.len());
                push(&mut out, &statement[i..end], &mut space);
                i = end;
            }
        }
    }
    out
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Whether the byte before `i` continues an identifier (`t1`, `e'` in `spe'`).
fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && is_word(b[i - 1])
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > b.len() {
        return None;
    }
    b[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The index after the closing quote of a string that starts at `i` (after
/// its opening quote): `''` is a quote inside; with `backslash`, so is `\'`.
fn end_of_quoted(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a dollar-quote tag (`$$` or `$name$`) starting at `i`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        if j == i + 1 && b[j].is_ascii_digit() {
            return None; // `$1`: a placeholder
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// The operations a statement can start with, as `db.operation.name` writes
/// them; anything else has no operation name (never a label from free text).
const OPERATIONS: [&str; 22] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "MERGE",
    "UPSERT",
    "CALL",
    "EXPLAIN",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "SET",
    "SHOW",
    "COPY",
    "VALUES",
];

/// `db.operation.name` and `db.collection.name` of a statement: its first
/// keyword (one of [`OPERATIONS`]) and the table after `FROM` (`SELECT`,
/// `DELETE`), `INTO` (`INSERT`, `MERGE`) or `UPDATE`, as written (schema
/// included). A `WITH` statement is named by its main statement.
pub(crate) fn summary(statement: &str) -> (Option<&'static str>, Option<&str>) {
    let mut words = Words::new(statement);
    let Some(first) = words.next() else {
        return (None, None);
    };
    let Some(mut op) = OPERATIONS.iter().copied().find(|o| o.eq_ignore_ascii_case(first)) else {
        return (None, None);
    };
    if op == "WITH" {
        // The main statement follows the last common table expression: the
        // first operation keyword at depth 0.
        match words.find_top_level_operation() {
            Some(main) => op = main,
            None => return (Some("WITH"), None),
        }
    }
    let after = match op {
        "SELECT" | "DELETE" => "FROM",
        "INSERT" | "MERGE" | "UPSERT" => "INTO",
        "UPDATE" => {
            return (
                Some(op),
                words
                    .next()
                    .filter(|w| !w.eq_ignore_ascii_case("ONLY"))
                    .or_else(|| words.next())
                    .map(trim_ident),
            );
        }
        _ => return (Some(op), None),
    };
    let collection = words.find_top_level(after).and_then(|_| words.next()).map(trim_ident);
    (Some(op), collection.filter(|c| !c.is_empty() && *c != "("))
}

fn trim_ident(w: &str) -> &str {
    w.trim_end_matches([';', ','])
}

/// Words of a statement at parenthesis depth, skipping literals and comments.
struct Words<'a> {
    s: &'a str,
    i: usize,
    depth: i32,
}

impl<'a> Words<'a> {
    fn new(s: &'a str) -> Self {
        Words { s, i: 0, depth: 0 }
    }

    /// The next word or symbol at any depth (depth tracked).
    fn next(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        while self.i < b.len() {
            let c = b[self.i];
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b';' => self.i += 1,
                b'-' if b.get(self.i + 1) == Some(&b'-') => {
                    self.i = b[self.i..]
                        .iter()
                        .position(|&x| x == b'\n')
                        .map_or(b.len(), |p| self.i + p + 1);
                }
                b'/' if b.get(self.i + 1) == Some(&b'*') => {
                    self.i = find(b, self.i + 2, b"*/").map_or(b.len(), |p| p + 2);
                }
                b'\'' => self.i = end_of_quoted(b, self.i + 1, false),
                b'(' => {
                    self.depth += 1;
                    self.i += 1;
                    return Some("(");
                }
                b')' => {
                    self.depth -= 1;
                    self.i += 1;
                    return Some(")");
                }
                _ => {
                    let start = self.i;
                    if c == b'"' {
                        let end = b[start + 1..]
                            .iter()
                            .position(|&x| x == b'"')
                            .map_or(b.len(), |p| start + p + 2);
                        // A quoted name may go on: `"s"."t"` or `s."t"`.
                        self.i = end;
                    }
                    while self.i < b.len() && (is_word(b[self.i]) || b[self.i] == b'.' || b[self.i] == b'"') {
                        self.i += 1;
                    }
                    if self.i == start {
                        self.i += utf8_len(c).min(b.len() - start);
                    }
                    return self.s.get(start..self.i);
                }
            }
        }
        None
    }

    /// Advances past the next word `keyword` at depth 0.
    fn find_top_level(&mut self, keyword: &str) -> Option<()> {
        while let Some(w) = self.next() {
            if self.depth == 0 && w.eq_ignore_ascii_case(keyword) {
                return Some(());
            }
        }
        None
    }

    /// The next operation keyword at depth 0 (after a `WITH`'s definitions).
    fn find_top_level_operation(&mut self) -> Option<&'static str> {
        let mut seen_as = false;
        while let Some(w) = self.next() {
            if self.depth != 0 {
                continue;
            }
            if w.eq_ignore_ascii_case("AS") {
                seen_as = true;
                continue;
            }
            if seen_as {
                if let Some(op) = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"]
                    .iter()
                    .copied()
                    .find(|o| o.eq_ignore_ascii_case(w))
                {
                    return Some(op);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_survive() {
        let cases = [
            (
                "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42",
                "SELECT * FROM users WHERE email = ? AND id = ?",
            ),
            (
                "select 'it''s', E'a\\'b', $$dollar 'x'$$, $tag$secret$tag$ from t",
                "select ?, ?, ?, ? from t",
            ),
            (
                "UPDATE t SET price = 1.5e3, v = .5, w = -7 WHERE k = $1",
                "UPDATE t SET price = ?, v = ?, w = -? WHERE k = $1",
            ),
            (
                "INSERT INTO t1 (c2) VALUES ('x'), (3)",
                "INSERT INTO t1 (c2) VALUES (?), (?)",
            ),
            (
                "SELECT 1 -- password 'hunter2'\n FROM \"Users\" /* 'hidden' */",
                "SELECT ? FROM \"Users\"",
            ),
            ("SELECT 'unterminated secret", "SELECT ?"),
            (
                "SELECT name FROM café WHERE x = 'é'",
                "SELECT name FROM café WHERE x = ?",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input}");
        }
    }

    #[test]
    fn digits_inside_names_are_not_numbers() {
        assert_eq!(
            sanitize("SELECT c1 FROM t2 WHERE e3 = 4"),
            "SELECT c1 FROM t2 WHERE e3 = ?"
        );
    }

    #[test]
    fn the_operation_and_table_come_from_the_statement() {
        type Summary<'a> = (Option<&'a str>, Option<&'a str>);
        let cases: [(&str, Summary<'_>); 10] = [
            ("SELECT id FROM users WHERE x = 1", (Some("SELECT"), Some("users"))),
            (
                "select * from public.orders o join users u on u.id = o.uid",
                (Some("SELECT"), Some("public.orders")),
            ),
            (
                "SELECT (SELECT max(a) FROM inner_t) FROM outer_t",
                (Some("SELECT"), Some("outer_t")),
            ),
            ("INSERT INTO items (a) VALUES ($1)", (Some("INSERT"), Some("items"))),
            ("update accounts set x = 1", (Some("UPDATE"), Some("accounts"))),
            (
                "DELETE FROM sessions WHERE t < now()",
                (Some("DELETE"), Some("sessions")),
            ),
            (
                "WITH r AS (SELECT * FROM a) UPDATE b SET x = 1",
                (Some("UPDATE"), Some("b")),
            ),
            ("SELECT pg_sleep(0.2)", (Some("SELECT"), None)),
            ("BEGIN", (Some("BEGIN"), None)),
            ("VACUUM whatever", (None, None)),
        ];
        for (input, want) in cases {
            assert_eq!(summary(input), want, "{input}");
        }
    }
}
