//! SMTP metrics: commands by verb and reply class, messages by outcome, transaction latency.
//!
//! Handles are registered once ([`SmtpMetrics::register`]) and passed to the layer; nothing is
//! looked up per request.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{SmtpMetrics, SmtpMetricsLayer};
pub use service::SmtpMetricsService;
