//! DNSBL/DNSWL scoring in the connection stack (postscreen's `postscreen_dnsbl_sites`): the
//! client's address is looked up in every zone at once, each listing adds the zone's weight
//! (negative for allowlists), and the sum decides: at or over `threshold` the client is refused
//! with `554 5.7.1` before the greeting; at or under `allowlist_threshold` the session is
//! marked exempt (no greylisting); in between, a positive score marks the client suspicious
//! (the tarpit slows it). Lookups have a timeout and fail open (counted); results are cached.

mod layer;
mod service;
mod zone;

pub use layer::{Dnsbl, DnsblCache, DnsblConfig, DnsblLayer, Score};
pub use service::DnsblService;
pub use zone::{Zone, ZoneError};
