//! Redis: one `EVALSHA` of the GCRA script per decision, bounded in time and in
//! concurrency, over one multiplexed connection that reconnects on its own.

use crate::gcra::{script_args, BucketCall, ReplyError, ScriptReply, SCRIPT};
use crate::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `redis://host:port[/db]` (also `redis://:password@host`, `redis+unix:///path`).
    pub url: String,
    /// Longest wait for one decision's answer, the connection included.
    pub timeout: Duration,
    /// Longest wait for one connection attempt in the background.
    pub connect_timeout: Duration,
    /// Most calls waiting for Redis at once; more get the failure mode at once.
    pub max_in_flight: usize,
}

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `max_in_flight` calls were already waiting.
    #[error("{0} Redis calls already in flight")]
    Overloaded(usize),
    /// No answer within the timeout.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The script's answer was malformed.
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

impl StoreError {
    /// The `kind` label of `meshwarden_rls_redis_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Overloaded(_) => "overloaded",
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(e) if matches!(e.kind(), ErrorKind::Server(_)) => "server",
            StoreError::Redis(_) => "connection",
            StoreError::Reply(_) => "reply",
        }
    }
}

/// The decision store.
pub struct RedisStore {
    conn: ConnectionManager,
    script_sha: String,
    timeout: Duration,
    max_in_flight: usize,
    permits: Semaphore,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisStore {
    /// A store for `opts.url`; connects lazily (in the background), so it can start
    /// while Redis is down. Fails only on a malformed URL. Needs a Tokio runtime.
    pub fn new(opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Self, RedisError> {
        let client = redis::Client::open(opts.url.as_str())?;
        // A reconnection tries a few times with short backoff and then fails the waiting
        // calls; the next call starts a new one. Each call waits at most `timeout` anyway.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let max_in_flight = opts.max_in_flight.max(1);
        Ok(Self {
            conn,
            script_sha: redis::Script::new(SCRIPT).get_hash().to_string(),
            timeout: opts.timeout,
            max_in_flight,
            permits: Semaphore::new(max_in_flight),
            up: AtomicBool::new(false),
            metrics,
        })
    }

    /// Whether the last health check or call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("redis is reachable");
            } else {
                tracing::warn!("redis is unreachable; limits use the failure mode");
            }
        }
        self.metrics.redis_up.set(i64::from(up));
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs the decision script for `calls` (one `EVALSHA`, or `EVAL` when Redis does not
    /// know the script yet), within the timeout (or `budget`, if shorter) and the
    /// in-flight bound.
    pub async fn decide(
        &self,
        calls: &[BucketCall],
        budget: Option<Duration>,
    ) -> Result<ScriptReply, StoreError> {
        let timeout = budget.map_or(self.timeout, |b| b.min(self.timeout));
        let result = self.decide_inner(calls, timeout).await;
        match &result {
            Ok(_) => self.set_up(true),
            Err(e) => {
                self.metrics.redis_error(e.kind());
                if e.kind() == "connection" {
                    self.set_up(false);
                }
            }
        }
        result
    }

    async fn decide_inner(
        &self,
        calls: &[BucketCall],
        timeout: Duration,
    ) -> Result<ScriptReply, StoreError> {
        let _permit = self
            .permits
            .try_acquire()
            .map_err(|_| StoreError::Overloaded(self.max_in_flight))?;
        self.metrics.redis_in_flight.inc();
        let started = Instant::now();
        let (keys, argv) = script_args(calls);
        let mut conn = self.conn.clone();
        let call = async {
            let eval = |command: &str, script: &str| {
                let mut cmd = redis::cmd(command);
                cmd.arg(script).arg(keys.len()).arg(&keys).arg(&argv);
                cmd
            };
            match eval("EVALSHA", &self.script_sha)
                .query_async::<Vec<String>>(&mut conn)
                .await
            {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    // First use, or Redis restarted: EVAL sends the script and caches it.
                    eval("EVAL", SCRIPT)
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                }
                other => other,
            }
        };
        let answer = tokio::time::timeout(timeout, call).await;
        self.metrics
            .redis_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.redis_in_flight.dec();
        let reply = answer.map_err(|_| StoreError::Timeout(timeout))??;
        Ok(ScriptReply::parse(&reply, calls.len())?)
    }

    /// `PING`, within `timeout`; records whether Redis is up.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let mut conn = self.conn.clone();
        let ok = matches!(
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                .await,
            Ok(Ok(_))
        );
        self.set_up(ok);
        ok
    }
}
