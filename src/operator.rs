//! The one guard of every operator route the crate serves: the status page and
//! its JSON ([`Apm::status_router`](crate::Apm::status_router)), `/alerts`
//! ([`Apm::alerts_router`](crate::Apm::alerts_router)) and `/metrics`
//! ([`Apm::metrics_router`](crate::Apm::metrics_router)) when it has a token.
//!
//! - The token is accepted as `Authorization: Bearer <token>` (the scheme in
//!   any case, one or more spaces after it, as RFC 9110 allows) or as
//!   `?token=<token>` (for a browser), and compared in constant time: the
//!   SHA-256 digests of the given and the expected token are compared whole, so
//!   neither the content nor the length of the token shows in the time taken.
//! - Every answer of these routes, a refusal included, is `Cache-Control:
//!   no-store` (operator data and tokens in URLs stay out of caches),
//!   `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` (a
//!   `?token=` URL never leaves in a `Referer`).
//!
//! A leaf module: it knows nothing of the routes it guards.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// Set on the response of every operator route (status page, `/alerts`,
/// `/metrics`, `/livez`, `/readyz`): the server layer leaves such requests out
/// of spans, metrics, the access log and alert inputs (unless the builder's
/// `record_operator_routes(true)`), so probes and scrapes are not traffic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OperatorRoute;

/// `router` with every answer marked [`OperatorRoute`] (for operator routes
/// that need no token, such as the health probes).
pub(crate) fn mark<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::map_response(|mut res: Response| async move {
        res.extensions_mut().insert(OperatorRoute);
        res
    }))
}

/// A token as the builder holds it until `build`: never shown by `Debug`.
#[derive(Clone, Default)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// An operator token, kept as its SHA-256 digest.
#[derive(Clone)]
pub(crate) struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

impl Token {
    pub(crate) fn new(token: &str) -> Self {
        Token {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `given` is the token, in time that depends on neither.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = given.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Whether `token` can be carried by `Authorization: Bearer` and in a query
/// string as it is: a token68 of RFC 9110 (letters, digits, `-._~+/`, then
/// `=` padding).
pub(crate) fn valid_token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The `token` parameter of a query string (`a=1&token=...`), as it is.
pub(crate) fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|pair| pair.strip_prefix("token="))
}

/// The credentials of `Authorization: Bearer <token>`: the scheme matched
/// case-insensitively (RFC 9110, 11.1), any number of spaces before the token.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether a request to an operator route may have its answer: always without
/// a token, else only with it.
pub(crate) fn allowed(token: Option<&Token>, headers: &HeaderMap, query: Option<&str>) -> bool {
    match token {
        None => true,
        Some(t) => bearer(headers)
            .or_else(|| query_token(query))
            .is_some_and(|given| t.matches(given)),
    }
}

/// `router` with the guard in front of each of its routes (not in front of
/// the routes it may be merged with later).
pub(crate) fn guard<S>(router: Router<S>, token: Option<Token>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(axum::middleware::from_fn_with_state(token.map(Arc::new), check))
}

async fn check(State(token): State<Option<Arc<Token>>>, req: Request, next: Next) -> Response {
    let mut res = if allowed(token.as_deref(), req.headers(), req.uri().query()) {
        next.run(req).await
    } else {
        refusal()
    };
    res.extensions_mut().insert(OperatorRoute);
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

fn refusal() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this operator endpoint needs its token: Authorization: Bearer <token>, or ?token=<token>\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn tokens_are_token68() {
        for t in ["s3cret", "a-b.c_d~e+f/g", "YWJj", "YWI=", "0123abcdef"] {
            assert!(valid_token(t), "{t}");
        }
        for t in ["", "=", "a b", "a&b", "a\"b", "a<b", "é", "a=b", " a"] {
            assert!(!valid_token(t), "{t}");
        }
    }

    #[test]
    fn tokens_compare_in_full() {
        let t = Token::new("abc");
        assert!(t.matches("abc"));
        assert!(!t.matches("abd"));
        assert!(!t.matches("abcd"));
        assert!(!t.matches("ab"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "Token([REDACTED])");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_spaces_are_tolerated() {
        for v in ["Bearer s3", "bearer s3", "BEARER s3", "bEaReR   s3", "Bearer s3  "] {
            assert_eq!(bearer(&auth(v)), Some("s3"), "{v}");
        }
        for v in ["Basic s3", "Bearers3", "Bearer", "Bearer   ", "Token s3"] {
            assert_eq!(bearer(&auth(v)), None, "{v}");
        }
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let t = Token::new("s3");
        assert!(allowed(None, &HeaderMap::new(), None));
        assert!(!allowed(Some(&t), &HeaderMap::new(), None));
        assert!(allowed(Some(&t), &auth("bearer s3"), None));
        assert!(!allowed(Some(&t), &auth("bearer nope"), Some("token=s3")));
        assert!(allowed(Some(&t), &HeaderMap::new(), Some("a=1&token=s3")));
        assert!(!allowed(Some(&t), &HeaderMap::new(), Some("a=1&token=s4")));
        assert!(!allowed(Some(&t), &HeaderMap::new(), Some("xtoken=s3")));
        assert_eq!(query_token(Some("a=1&token=s3cret")), Some("s3cret"));
    }
}
