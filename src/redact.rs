//! Redaction of sensitive values before they leave the process.

/// What replaces a redacted value in span attributes, as the HTTP semantic
/// conventions advise for `url.query` and `url.full`.
pub(crate) const REDACTED: &str = "REDACTED";

/// What replaces a sensitive value in log lines (event fields, access log) and
/// in span attributes named like a secret.
pub(crate) const REDACTED_LOG: &str = "[REDACTED]";

/// Header names whose values are secrets.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-csrf-token",
];

/// Words that make a field or attribute name sensitive wherever they appear in it.
const SENSITIVE_FIELD_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "session",
    "card_number",
];

/// Decides which field, attribute and header names hold secrets: the built-in
/// list plus the names the user added (compared without case).
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    extra: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(extra: &[String]) -> Self {
        Redactor {
            extra: extra.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// A field or attribute name whose value must not be written: a secret-like
    /// word in it (`password`, `token`, `secret`, `api_key`, `authorization`,
    /// `cookie`...), a sensitive header name, or a user-named field.
    pub(crate) fn is_sensitive_field(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        let dashed = lower.replace('_', "-");
        SENSITIVE_FIELD_WORDS.iter().any(|w| lower.contains(w))
            || SENSITIVE_HEADERS.contains(&dashed.as_str())
            || self.extra.contains(&lower)
    }

    /// Replaces the values of sensitive attributes (spans made by `tracing`
    /// through `tracing-opentelemetry` carry the span's fields as attributes).
    pub(crate) fn redact_attributes(&self, attrs: &mut [opentelemetry::KeyValue]) {
        for kv in attrs.iter_mut() {
            if self.is_sensitive_field(kv.key.as_str()) {
                kv.value = opentelemetry::Value::from(REDACTED_LOG);
            }
        }
    }
}

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

    #[test]
    fn secret_like_field_names_and_user_named_fields_are_sensitive() {
        let r = Redactor::new(&["SSN".to_owned()]);
        for name in [
            "password",
            "user_password",
            "api_key",
            "Authorization",
            "set_cookie",
            "x_api_key",
            "ssn",
        ] {
            assert!(r.is_sensitive_field(name), "{name}");
        }
        for name in ["user_id", "route", "status", "message"] {
            assert!(!r.is_sensitive_field(name), "{name}");
        }
    }
}
