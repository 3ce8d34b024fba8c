//! Traces: the server span's semantic-convention attributes, W3C propagation,
//! head sampling and the client layer for outgoing calls.

pub(crate) mod client;
pub(crate) mod propagation;
mod sampler;
pub(crate) mod span;

pub use client::{ClientFuture, ClientLayer, ClientService};
pub use sampler::Sampler;
