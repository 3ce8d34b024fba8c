//! Traces: the server span's semantic-convention attributes, W3C propagation,
//! head sampling and the client layer (and `reqwest` middleware) for outgoing
//! calls.

pub(crate) mod client;
pub(crate) mod propagation;
#[cfg(feature = "reqwest")]
mod reqwest;
mod sampler;
pub(crate) mod span;

pub use client::{ClientFuture, ClientLayer, ClientService};
#[cfg(feature = "reqwest")]
pub use reqwest::ReqwestMiddleware;
pub use sampler::Sampler;
