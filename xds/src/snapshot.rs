//! What the server serves: a snapshot answers, per node and type URL, with the resources
//! that node should hold. Resource types live behind this trait, outside this crate.

use crate::resource::Resources;
use envoy_types::pb::envoy::config::core::v3::Node;

/// Everything served at one point in time. Snapshots are published through a
/// `tokio::sync::watch` channel; every open stream moves to the newest one.
pub trait Snapshot: Send + Sync + 'static {
    /// A proxy's identity as the resource types need it, derived once per stream.
    type Node: Send + Sync + 'static;

    /// Derives the identity from the node of a stream's first request.
    fn node(node: &Node) -> Self::Node;

    /// Increases with every published snapshot.
    fn id(&self) -> u64;

    /// The type URLs served, in the order responses of several due types go out on one
    /// aggregated stream (e.g. clusters before the configurations that use them).
    fn types(&self) -> &[&'static str];

    /// The resources of `type_url` for `node`, sorted by name; `None` when the type is not
    /// served (the client then gets one empty answer, so it does not wait forever).
    fn resources(&self, type_url: &str, node: &Self::Node) -> Option<Resources>;

    /// Whether a rejection is transient, and when to send the same resources again. A
    /// rejected version is otherwise never re-sent on the stream. Envoy, for one, rejects
    /// a Wasm filter whose remote module is not cached yet while it fetches the module in
    /// the background, and expects the same configuration again.
    fn retry_rejected(
        &self,
        _type_url: &str,
        _node: &Self::Node,
        _message: &str,
    ) -> Option<std::time::Duration> {
        None
    }
}
