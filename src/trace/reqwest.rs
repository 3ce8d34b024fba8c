//! The `reqwest` client: a [`reqwest_middleware::Middleware`] that does for a
//! `reqwest_middleware::ClientWithMiddleware` what [`ClientLayer`](crate::ClientLayer)
//! does for a `tower::Service`: a CLIENT span under the current span,
//! `traceparent`/`tracestate`/`baggage` sent, and `http.client.request.duration`.
//! Both go through the same record, so the spans and the metric are the same.
//!
//! ```no_run
//! # async fn demo(apm: &tower_apm::Apm) -> Result<(), reqwest_middleware::Error> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(apm.reqwest_middleware())
//!     .build();
//! // Inside a handler the call joins the handler's trace.
//! let res = client.get("http://inventory.internal/items/7").send().await?;
//! # let _ = res; Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Extensions, Uri};
use reqwest_middleware::{Middleware, Next};

use crate::layer::Shared;
use crate::trace::client::ClientInFlight;

/// A [`reqwest_middleware::Middleware`] for outgoing calls made with `reqwest`
/// (feature `reqwest`). Made by [`Apm::reqwest_middleware`](crate::Apm::reqwest_middleware).
///
/// Each call gets a CLIENT span, a child of the OpenTelemetry context current
/// when it is sent (inside a handler wrapped by [`ApmLayer`](crate::ApmLayer),
/// the server span), named by its method, with `http.request.method`,
/// `server.address`, `server.port`, `url.full` (credentials removed, sensitive
/// query values redacted), `network.protocol.version`,
/// `http.response.status_code` and `error.type` (the status code for 4xx and
/// 5xx, `timeout`, or `_OTHER` for other failures; `cancelled` when the call is
/// dropped before its response). The span ends when the response head arrives.
/// `traceparent`, `tracestate` and `baggage` are written as `OTEL_PROPAGATORS`
/// says, and the call is counted in `http.client.request.duration`.
///
/// Redirects that `reqwest` follows by itself are part of the one call.
#[derive(Debug, Clone)]
pub struct ReqwestMiddleware {
    pub(crate) shared: Arc<Shared>,
}

/// Ends the call as cancelled when the future is dropped before an answer.
struct Guard(Option<ClientInFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.finish(None, Some("cancelled"));
        }
    }
}

/// `error.type` of a failed call: `timeout`, else `_OTHER`.
fn error_type(e: &reqwest_middleware::Error) -> &'static str {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "timeout",
        _ => "_OTHER",
    }
}

/// The request's URL as an `http::Uri` (without the fragment, which is never sent).
fn uri_of(url: &reqwest::Url) -> Uri {
    let s = url.as_str();
    let s = s.split_once('#').map_or(s, |(before, _)| before);
    Uri::try_from(s).unwrap_or_default()
}

impl ReqwestMiddleware {
    async fn call(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if self.shared.disabled {
            return next.run(req, extensions).await;
        }
        let (method, uri, version) = (req.method().clone(), uri_of(req.url()), req.version());
        let mut guard = Guard(Some(ClientInFlight::start(
            &self.shared,
            method,
            uri,
            version,
            req.headers_mut(),
        )));
        let out = next.run(req, extensions).await;
        if let Some(mut state) = guard.0.take() {
            match &out {
                Ok(res) => {
                    state.set_version(res.version());
                    state.finish(Some(res.status().as_u16()), None);
                }
                Err(e) => state.finish(None, Some(error_type(e))),
            }
        }
        out
    }
}

// Written out as `async_trait` expands it, so the crate needs no proc macro of its own.
impl Middleware for ReqwestMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: reqwest::Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.call(req, extensions, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_is_not_part_of_the_uri() {
        let url = reqwest::Url::parse("http://user:pw@api.local:81/p?q=1#frag").unwrap();
        let uri = uri_of(&url);
        assert_eq!(uri.host(), Some("api.local"));
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/p?q=1");
    }
}
