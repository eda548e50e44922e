//! What the proxy knows of the current stream's downstream connection, read through
//! [`crate::host::Host::property`] only when asked.

use crate::host::host;
use meshwarden_common::Peer;

/// Envoy attribute: the first URI SAN of the certificate the downstream presented (empty or
/// absent without TLS or without a client certificate).
pub const PEER_URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];

/// The current stream's downstream peer; its identity is read from the proxy on first use,
/// at most once.
pub fn downstream_peer() -> Peer {
    Peer::lazy(|| host().property(&PEER_URI_SAN))
}
