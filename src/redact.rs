//! Redaction of sensitive values before they leave the process.

/// What replaces a redacted value in span attributes, as the HTTP semantic
/// conventions advise for `url.query` and `url.full`.
pub(crate) const REDACTED: &str = "REDACTED";

/// Query parameter names whose values are never exported (compared without case;
/// a name containing one of the `*_CONTAINS` words matches too).
const SENSITIVE_QUERY_PARAMS: &[&str] = &[
    "awsaccesskeyid",
    "signature",
    "sig",
    "x-goog-signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "code",
    "key",
];
const SENSITIVE_QUERY_CONTAINS: &[&str] = &[
    "password", "passwd", "pwd", "token", "secret", "api_key", "apikey", "auth", "session",
];

fn is_sensitive_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SENSITIVE_QUERY_PARAMS.contains(&lower.as_str()) || SENSITIVE_QUERY_CONTAINS.iter().any(|w| lower.contains(w))
}

/// Returns the query with the value of every sensitive parameter replaced by
/// [`REDACTED`]; names, order and other values are kept as sent.
pub(crate) fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_sensitive_param(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_query_values_are_redacted_and_others_kept() {
        assert_eq!(
            redact_query("q=shoes&password=hunter2&page=2&X-Amz-Signature=abc&access_token=t"),
            "q=shoes&password=REDACTED&page=2&X-Amz-Signature=REDACTED&access_token=REDACTED"
        );
        assert_eq!(redact_query("flag&sort=asc"), "flag&sort=asc");
    }
}
