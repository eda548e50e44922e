//! Replicas sharing one store (etcd): each follows the others' commits and publishes the
//! status of its own proxies, so `meshwarden status` on any replica lists every proxy.
//!
//! - [`follow_store`] reloads the registry whenever the store reports a change (its etcd
//!   watch), and every [`RESYNC_EVERY`] in case a notification was lost.
//! - [`publish_status`] writes this replica's connected proxies every [`PUBLISH_EVERY`]
//!   to an ephemeral record (`status/<replica id>`) held by the replica's etcd lease: a
//!   replica that dies stops renewing it and its rows disappear after the lease's TTL.
//!   With them it publishes the breaker reports it received (`breakers/<replica id>`):
//!   a proxy's reports reach whichever replica its cluster picks.
//! - [`ReplicaStatus`] reads the other replicas' rows and reports for the status API.

use crate::api::pb;
use crate::breakers::BreakerBoard;
use crate::registry::PolicyRegistry;
use crate::xds::ProxyRegistry;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Full reload interval, on top of watch notifications.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// How often a replica publishes its proxies' status.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Rows one replica publishes at most (an etcd value is limited to about 1.5 MiB).
const MAX_PUBLISHED: usize = 2_000;

/// Ephemeral record prefix of replica status.
const STATUS_PREFIX: &str = "status/";
/// Ephemeral record prefix of the breaker reports replicas hold.
const BREAKERS_PREFIX: &str = "breakers/";
/// Breaker reports one replica publishes at most.
const MAX_PUBLISHED_REPORTS: usize = 5_000;

/// A replica id: `$HOSTNAME` (the pod name in Kubernetes) or the host name, with the
/// process id so two replicas on one host differ.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        });
    format!("{host}-{}", std::process::id())
}

/// Reloads `registry` on every change its shared store reports, and every
/// [`RESYNC_EVERY`], until `shutdown`. Does nothing for a store only this process writes.
pub async fn follow_store(registry: Arc<PolicyRegistry>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut changes) = registry.store_changes() else {
        return;
    };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = resync.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let registry = registry.clone();
        match tokio::task::spawn_blocking(move || registry.refresh()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reload the shared store; serving what was loaded")
            }
            Err(e) => tracing::error!(error = %e, "store reload task failed"),
        }
    }
}

/// Publishes this replica's proxies every [`PUBLISH_EVERY`] until `shutdown`.
pub async fn publish_status(
    status: ReplicaStatus,
    proxies: ProxyRegistry,
    breakers: BreakerBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let mut rows: Vec<pb::ProxyStatus> = proxies
            .list()
            .iter()
            .filter(|p| p.disconnected_at.is_none())
            .map(crate::api::status::proxy)
            .collect();
        if rows.len() > MAX_PUBLISHED {
            tracing::warn!(
                proxies = rows.len(),
                published = MAX_PUBLISHED,
                "too many proxies to publish all of them to the other replicas"
            );
            rows.truncate(MAX_PUBLISHED);
        }
        for row in &mut rows {
            row.replica = status.replica_id.clone();
        }
        let value = pb::ListProxiesResponse { proxies: rows }.encode_to_vec();
        let mut reports = breakers.held();
        reports.truncate(MAX_PUBLISHED_REPORTS);
        let reports = pb::HeldBreakerReports { reports }.encode_to_vec();
        let status = status.clone();
        let key = format!("{STATUS_PREFIX}{}", status.replica_id);
        let reports_key = format!("{BREAKERS_PREFIX}{}", status.replica_id);
        let written = tokio::task::spawn_blocking(move || {
            status.registry.put_ephemeral(&key, value)?;
            status.registry.put_ephemeral(&reports_key, reports)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "cannot publish proxy status to the other replicas");
        }
    }
}

/// This replica's id, and the other replicas' published proxies.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    replica_id: String,
    registry: Arc<PolicyRegistry>,
}

impl ReplicaStatus {
    /// Status of the replica `replica_id`, sharing `registry`'s store.
    pub fn new(replica_id: String, registry: Arc<PolicyRegistry>) -> Self {
        Self {
            replica_id,
            registry,
        }
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The proxies every other live replica published (blocking: reads the store).
    pub fn others(&self) -> Result<Vec<pb::ProxyStatus>, crate::store::StoreError> {
        self.published(STATUS_PREFIX, |l: pb::ListProxiesResponse| l.proxies)
    }

    /// The breaker reports every other live replica holds (blocking: reads the store).
    pub fn other_breakers(&self) -> Result<Vec<pb::HeldBreakerReport>, crate::store::StoreError> {
        self.published(BREAKERS_PREFIX, |l: pb::HeldBreakerReports| l.reports)
    }

    /// The records under `prefix` of every other replica, decoded and flattened.
    fn published<M: Message + Default, T>(
        &self,
        prefix: &str,
        items: impl Fn(M) -> Vec<T>,
    ) -> Result<Vec<T>, crate::store::StoreError> {
        let own = format!("{prefix}{}", self.replica_id);
        let mut out = Vec::new();
        for (key, value) in self.registry.ephemeral_records(prefix)? {
            if key == own {
                continue;
            }
            match M::decode(value.as_slice()) {
                Ok(m) => out.extend(items(m)),
                Err(e) => tracing::warn!(key, error = %e, "unreadable replica record"),
            }
        }
        Ok(out)
    }
}
