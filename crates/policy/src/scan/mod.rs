//! Scanning each message with the engines operators already run, before the backend commits
//! it: ClamAV (viruses and worms) and rspamd (spam).
//!
//! The final dot is held until both verdicts are in (they run concurrently: the slower one
//! bounds the latency), so a refused message is refused in the SMTP dialogue (no bounce, nothing
//! stored). Two paths:
//!
//! - **streamed** (ClamAV alone, rspamd with `headers = false`, or dry-run): each chunk goes on
//!   to the backend as it comes, and to clamd on its `zINSTREAM` connection at the same time;
//!   rspamd gets a copy (bounded by its `max_size` and the byte budget shared with the content
//!   policies) at end of data. A refusal reaches the relay as `DataEnd(Failed)`, which aborts
//!   the backend transaction before its final dot.
//! - **held** (rspamd may change headers): the message is kept, the backend not yet asked
//!   (DATA and BDAT get the relay's usual first answers); at end of data, once the verdict is
//!   in, the message is passed on with rspamd's header changes, or refused (the backend saw
//!   only its envelope, which the relay resets). Past rspamd's `max_size` or the budget (with
//!   `on_over_budget = "accept"`), what was held is passed on and the rest streams, unchecked
//!   by rspamd (counted).
//!
//! A transaction's scans live in the session's service and are dropped with the transaction:
//! a verdict is never applied to another message.

mod headers;
mod layer;
mod service;
mod verdict;

pub use headers::{HeaderEdits, apply as apply_header_edits};
pub use layer::{ClamavPolicy, Fallback, RspamdPolicy, ScanConfig, ScanLayer, ScanMetrics};
pub use service::{ResponseFuture, Scan};
