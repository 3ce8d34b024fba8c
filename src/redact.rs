//! Redaction of sensitive values before they leave the process.
//!
//! One list of secret-like names decides for every output: query parameters
//! (access log, `url.query`, `url.full`, security events), `tracing` field
//! names in log lines, span attribute names and header names. A name is
//! compared after percent-decoding (`pass%77ord`), without case, and without
//! its separators (`-`, `_`, `.`, `+`, spaces), so `X-Api-Key`, `api_key` and
//! `apiKey` are one name. As in Django's `HIDDEN_SETTINGS`, a name containing
//! one of the `SECRET_WORDS` is sensitive wherever the word is (`monkey`,
//! `author` and `bypass` are redacted too: over-redacting is the safe failure);
//! a few short names are sensitive only as a whole (`SECRET_NAMES`).
//!
//! Endpoints and other URLs are shown without their userinfo
//! (`url_for_display`, `scrub_userinfo`) in every log line, error and
//! `Debug` output.

use std::borrow::Cow;

/// What replaces a redacted value in span attributes, as the HTTP semantic
/// conventions advise for `url.query` and `url.full`.
pub(crate) const REDACTED: &str = "REDACTED";

/// What replaces a sensitive value in log lines (event fields, access log) and
/// in span attributes named like a secret.
pub(crate) const REDACTED_LOG: &str = "[REDACTED]";

/// Words that make a name sensitive wherever they appear in it, lowercase and
/// without separators. Django's list (API key, auth, token, key, secret, pass,
/// signature) and the usual others: `password`, `passphrase`, `access_key`,
/// `access_token`, `refresh_token`, `private_key`, `client_secret`,
/// `authorization`, `x-api-key`, `x-amz-signature`, `x-amz-credential`,
/// `x-amz-security-token`, `awsaccesskeyid`, `set-cookie`, `session_id`... all
/// contain one of them.
const SECRET_WORDS: &[&[u8]] = &[
    b"pass",
    b"pwd",
    b"secret",
    b"token",
    b"key",
    b"auth",
    b"signature",
    b"credential",
    b"cookie",
    b"session",
    b"jwt",
    b"csrf",
    b"xsrf",
    b"cardnumber",
];

/// Names that are sensitive only as a whole (as words they are inside too many
/// ordinary names: `signal`, `encode`, `hotpot`): signed-URL signatures, OAuth
/// authorization codes, one-time passwords.
const SECRET_NAMES: &[&[u8]] = &[b"sig", b"code", b"otp"];

/// Names up to this many bytes (once normalized) are compared on the stack.
const NAME_BUF: usize = 64;

/// `name` percent-decoded, lowercased and without separators, written into
/// `buf`; the bytes past its end (when it is longer) go to `spill`.
fn normalize<'b>(name: &[u8], buf: &'b mut [u8; NAME_BUF], spill: &'b mut Vec<u8>) -> &'b [u8] {
    let mut len = 0;
    let mut i = 0;
    while i < name.len() {
        let mut b = name[i];
        i += 1;
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                name.get(i).copied().and_then(hex_val),
                name.get(i + 1).copied().and_then(hex_val),
            ) {
                b = hi << 4 | lo;
                i += 2;
            }
        }
        if matches!(b, b'-' | b'_' | b'.' | b'+' | b' ') {
            continue;
        }
        let b = b.to_ascii_lowercase();
        if len < NAME_BUF {
            buf[len] = b;
            len += 1;
        } else {
            if spill.is_empty() {
                spill.extend_from_slice(&buf[..]);
            }
            spill.push(b);
        }
    }
    if spill.is_empty() { &buf[..len] } else { spill }
}

/// The value of one hexadecimal digit (either case).
pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a normalized name is on the built-in list.
fn is_secret_normalized(n: &[u8]) -> bool {
    SECRET_NAMES.contains(&n) || SECRET_WORDS.iter().any(|w| contains(n, w))
}

/// Whether `name` (a query parameter, header, field or attribute name) holds a
/// secret by the built-in list. Allocates nothing for names up to 64 bytes.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let (mut buf, mut spill) = ([0u8; NAME_BUF], Vec::new());
    is_secret_normalized(normalize(name.as_bytes(), &mut buf, &mut spill))
}

/// Decides which field, attribute and header names hold secrets: the built-in
/// list plus the names the user added (compared the same way).
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    extra: Vec<Vec<u8>>,
}

impl Redactor {
    pub(crate) fn new(extra: &[String]) -> Self {
        Redactor {
            extra: extra
                .iter()
                .map(|n| {
                    let (mut buf, mut spill) = ([0u8; NAME_BUF], Vec::new());
                    normalize(n.as_bytes(), &mut buf, &mut spill).to_vec()
                })
                .collect(),
        }
    }

    /// A field or attribute name whose value must not be written: a name on
    /// the built-in list (see the module) or one the user named.
    pub(crate) fn is_sensitive_field(&self, name: &str) -> bool {
        let (mut buf, mut spill) = ([0u8; NAME_BUF], Vec::new());
        let n = normalize(name.as_bytes(), &mut buf, &mut spill);
        is_secret_normalized(n) || self.extra.iter().any(|e| e.as_slice() == n)
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

/// Returns the query with the value of every sensitive parameter replaced by
/// [`REDACTED`]; names, order and other values are kept as sent.
///
/// Parameters are separated by `&` or `;`. As an application may read `;` as
/// part of a value, a sensitive value is redacted up to the next `&`
/// (`password=a;b&q=1` becomes `password=REDACTED&q=1`).
pub(crate) fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let mut rest = pair;
        loop {
            let (segment, next) = match rest.split_once(';') {
                Some((segment, next)) => (segment, Some(next)),
                None => (rest, None),
            };
            match segment.split_once('=') {
                Some((name, _)) if is_secret_name(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                    break;
                }
                _ => out.push_str(segment),
            }
            match next {
                Some(next) => {
                    out.push(';');
                    rest = next;
                }
                None => break,
            }
        }
    }
    out
}

/// `url` without its userinfo (`http://user:secret@host/` becomes
/// `http://host/`), for logs, errors and `Debug` output. Also for values
/// without a scheme (`user:secret@host:4317`).
pub(crate) fn url_for_display(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}{}", &url[..start], &url[start + at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// `text` (an error message from a transport, say) with the userinfo of every
/// URL in it removed: whatever follows a `://` up to an `@` before the end of
/// the authority.
pub(crate) fn scrub_userinfo(text: &str) -> Cow<'_, str> {
    let is_end = |c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace();
    let mut out: Option<String> = None;
    let mut done = 0; // bytes of `text` handled (copied to `out` or dropped)
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let end = text[start..].find(is_end).map_or(text.len(), |j| start + j);
        if let Some(at) = text[start..end].rfind('@') {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[done..start]);
            done = start + at + 1;
        }
        from = end.max(start);
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[done..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
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
    fn the_issue_names_are_redacted_in_queries() {
        for name in [
            "api-key",
            "apikey",
            "api_key",
            "X-API-KEY",
            "access_key",
            "access_token",
            "refresh_token",
            "private_key",
            "client_secret",
            "credential",
            "credentials",
            "jwt",
            "pass",
            "passphrase",
            "password",
            "otp",
            "session",
            "sessionid",
            "auth",
            "Authorization",
            "signature",
            "sig",
            "code",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "AWSAccessKeyId",
            "x-goog-signature",
        ] {
            assert_eq!(
                redact_query(&format!("q=1&{name}=s3cr3t&page=2")),
                format!("q=1&{name}=REDACTED&page=2"),
                "{name}"
            );
        }
    }

    #[test]
    fn percent_encoded_names_are_decoded_before_they_are_compared() {
        assert_eq!(redact_query("pass%77ord=hunter2"), "pass%77ord=REDACTED");
        assert_eq!(redact_query("%74oken=t&q=1"), "%74oken=REDACTED&q=1");
        assert_eq!(redact_query("api%5Fkey=k"), "api%5Fkey=REDACTED");
        // A malformed escape is compared as it is.
        assert_eq!(redact_query("pass%zz=x&%=1"), "pass%zz=REDACTED&%=1");
    }

    #[test]
    fn semicolons_separate_parameters_and_a_secret_runs_to_the_next_ampersand() {
        assert_eq!(redact_query("q=1;password=hunter2"), "q=1;password=REDACTED");
        assert_eq!(redact_query("q=1;token=a;b&page=2"), "q=1;token=REDACTED&page=2");
        assert_eq!(redact_query("a=1;b=2&c=3"), "a=1;b=2&c=3");
    }

    #[test]
    fn ordinary_names_are_kept() {
        for name in [
            "q",
            "page",
            "sort",
            "user_id",
            "route",
            "status",
            "message",
            "id",
            "limit",
            "signal",
            "encode",
            "http.route",
            "url.path",
            "url.query",
            "client.address",
            "http.response.status_code",
            "code.lineno",
            "code.filepath",
            "otel.name",
        ] {
            assert!(!is_secret_name(name), "{name}");
            assert_eq!(redact_query(&format!("{name}=v")), format!("{name}=v"));
        }
    }

    #[test]
    fn secret_like_field_names_and_user_named_fields_are_sensitive() {
        let r = Redactor::new(&["SSN".to_owned(), "tax-id".to_owned()]);
        for name in [
            "password",
            "user_password",
            "api_key",
            "apiKey",
            "Authorization",
            "set_cookie",
            "x_api_key",
            "refresh_token",
            "client_secret",
            "credentials",
            "jwt",
            "passphrase",
            "otp",
            "session",
            "ssn",
            "tax_id",
            "http.request.header.authorization",
            "http.request.header.x-api-key",
        ] {
            assert!(r.is_sensitive_field(name), "{name}");
        }
        for name in ["user_id", "route", "status", "message", "q", "page", "sort"] {
            assert!(!r.is_sensitive_field(name), "{name}");
        }
    }

    #[test]
    fn header_names_are_on_the_same_list() {
        for name in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "api-key",
            "x-auth-token",
            "x-csrf-token",
            "x-amz-security-token",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["user-agent", "accept", "content-type", "x-request-id", "traceparent"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn long_names_are_compared_whole() {
        let long = format!("{}password", "x".repeat(100));
        assert!(is_secret_name(&long));
        assert!(!is_secret_name(&"x".repeat(200)));
        let r = Redactor::new(&[format!("{}ssn", "y".repeat(70))]);
        assert!(r.is_sensitive_field(&format!("{}SSN", "Y".repeat(70))));
    }

    #[test]
    fn userinfo_is_removed_from_urls() {
        assert_eq!(
            url_for_display("http://user:secret@host:4317/v1"),
            "http://host:4317/v1"
        );
        assert_eq!(url_for_display("http://user@host"), "http://host");
        assert_eq!(url_for_display("user:secret@host:4317"), "host:4317");
        assert_eq!(url_for_display("http://a:b@c@host/x@y"), "http://host/x@y");
        assert!(matches!(url_for_display("http://host:4317/v1?a=b@c"), Cow::Borrowed(_)));
        assert_eq!(
            scrub_userinfo("error sending to http://u:p@h:1/x: refused; and https://k@g.example?x"),
            "error sending to http://h:1/x: refused; and https://g.example?x"
        );
        assert_eq!(scrub_userinfo("no url: a@b"), "no url: a@b");
        assert_eq!(scrub_userinfo("\"http://u:p@h\""), "\"http://h\"");
    }
}
