//! `--config-url`: the limits file fetched over HTTP (the control plane serves the limits
//! of every `scope: global` RateLimitPolicy at `/ratelimit/config`), polled at a bounded
//! interval. A fetch that fails, times out, is too large or does not validate keeps the
//! last good limits (counted in `meshwarden_rls_config_fetches_total{result="error"}` and,
//! for invalid content, `meshwarden_rls_config_reloads_total{result="error"}`), so
//! decisions never depend on the control plane being up.

use crate::config::{LimitsConfig, MAX_FILE_BYTES};
use crate::metrics::ResultLabels;
use crate::server::Server;
use std::time::Duration;

/// Shortest `--config-poll` interval.
pub const MIN_POLL: Duration = Duration::from_millis(100);
/// Longest `--config-poll` interval.
pub const MAX_POLL: Duration = Duration::from_secs(300);

/// A limits file that could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Only `http://` URLs are fetched.
    #[error("{0}: only http:// URLs are supported")]
    Scheme(String),
    /// Connection, timeout or protocol error.
    #[error("GET {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    /// A status other than 200.
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// The body is larger than a limits file may be.
    #[error("GET {url}: more than {MAX_FILE_BYTES} bytes")]
    TooLarge { url: String },
    /// The body is not UTF-8.
    #[error("GET {url}: the body is not UTF-8")]
    NotText { url: String },
}

/// Fetches limits from one URL.
#[derive(Debug, Clone)]
pub struct ConfigUrl {
    url: String,
    client: reqwest::Client,
}

impl ConfigUrl {
    /// A fetcher for `url` (`http://host:port/path`); each fetch takes at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, FetchError> {
        if !url.starts_with("http://") {
            return Err(FetchError::Scheme(url.to_string()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|source| FetchError::Http {
                url: url.to_string(),
                source,
            })?;
        Ok(Self {
            url: url.to_string(),
            client,
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body of one GET (status 200, at most [`MAX_FILE_BYTES`], UTF-8).
    pub async fn fetch(&self) -> Result<String, FetchError> {
        let http = |source| FetchError::Http {
            url: self.url.clone(),
            source,
        };
        let mut r = self.client.get(&self.url).send().await.map_err(http)?;
        if r.status().as_u16() != 200 {
            return Err(FetchError::Status {
                url: self.url.clone(),
                status: r.status().as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: self.url.clone(),
        };
        if r.content_length().is_some_and(|n| n > MAX_FILE_BYTES) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(http)? {
            if (body.len() + chunk.len()) as u64 > MAX_FILE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| FetchError::NotText {
            url: self.url.clone(),
        })
    }

    /// Fetches and parses the limits (for the first load).
    pub async fn load(&self) -> anyhow::Result<(String, LimitsConfig)> {
        let text = self.fetch().await?;
        let config = LimitsConfig::parse(&text)?;
        Ok((text, config))
    }
}

/// Polls `source` every `every` (for as long as the future is polled), swapping in each
/// new valid limits file; `last` is the text of the limits in force (unchanged text is
/// not reloaded).
pub async fn poll(server: &Server, source: &ConfigUrl, every: Duration, mut last: Option<String>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let fetched = source.fetch().await;
        let label = if fetched.is_ok() { "ok" } else { "error" };
        server
            .metrics()
            .config_fetches
            .get_or_create(&ResultLabels { result: label })
            .inc();
        let text = match fetched {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("limits not fetched, keeping the last good ones: {e}");
                continue;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        match server.reload_text(&text) {
            Ok(()) => {
                tracing::info!(url = source.url(), "limits reloaded");
                last = Some(text);
            }
            Err(e) => tracing::error!(
                url = source.url(),
                "fetched limits are invalid, keeping the last good ones: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{descriptor, request};
    use crate::{FailureMode, ServerOptions, StoreOptions};
    use axum::extract::State;
    use axum::routing::get;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use std::sync::{Arc, Mutex};

    type Served = Arc<Mutex<(u16, String)>>;

    fn limits(key: &str) -> String {
        format!(
            "{{\"domains\": [{{\"domain\": \"d\", \"limits\": [{{\"name\": \"l\", \"descriptors\": [{{\"key\": \"{key}\"}}],
              \"rate\": {{\"requests\": 1, \"unit\": \"hour\"}}, \"failureMode\": \"deny\"}}]}}]}}"
        )
    }

    /// An HTTP server answering `/limits` with whatever `served` holds.
    async fn serve(served: Served) -> String {
        let app = axum::Router::new()
            .route(
                "/limits",
                get(|State(s): State<Served>| async move {
                    let (status, body) = s.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }),
            )
            .with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/limits")
    }

    /// Whether descriptor `key=v` has a limit: Redis is unreachable, so a limited
    /// descriptor gets its failure mode (deny), an unlimited one OK.
    async fn limited(server: &Server, key: &str) -> bool {
        let r = server
            .limiter()
            .decide(&request("d", vec![descriptor(&[(key, "v")])]))
            .await
            .unwrap();
        r.overall_code == Code::OverLimit as i32
    }

    fn fetches(server: &Server, result: &'static str) -> u64 {
        server
            .metrics()
            .config_fetches
            .get_or_create(&ResultLabels { result })
            .get()
    }

    #[tokio::test]
    async fn polls_swap_in_new_limits_and_keep_the_last_good_ones() {
        let served: Served = Arc::new(Mutex::new((200, limits("a"))));
        let url = serve(served.clone()).await;
        let source = ConfigUrl::new(&url, Duration::from_secs(1)).unwrap();
        let (text, config) = source.load().await.unwrap();
        let server = Server::start(
            ServerOptions {
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                redis: StoreOptions {
                    url: "redis://127.0.0.1:1".into(),
                    timeout: Duration::from_millis(20),
                    connect_timeout: Duration::from_millis(20),
                    max_in_flight: 8,
                },
                failure_mode: FailureMode::Allow,
                key_prefix: "t:".into(),
                health_interval: Duration::from_secs(10),
            },
            &config,
        )
        .await
        .unwrap();
        let every = Duration::from_millis(100);
        let check = async {
            assert!(limited(&server, "a").await);
            assert!(!limited(&server, "b").await);
            let wait = Duration::from_millis(400);

            *served.lock().unwrap() = (200, limits("b"));
            tokio::time::sleep(wait).await;
            assert!(limited(&server, "b").await, "new limits swapped in");
            assert!(!limited(&server, "a").await);

            *served.lock().unwrap() = (200, "domains: [{domain: d, limits: [{}]}]".into());
            tokio::time::sleep(wait).await;
            assert!(
                limited(&server, "b").await,
                "invalid content keeps the old limits"
            );
            *served.lock().unwrap() = (503, "down".into());
            let errors = fetches(&server, "error");
            tokio::time::sleep(wait).await;
            assert!(
                fetches(&server, "error") > errors,
                "failed fetches are counted"
            );
            assert!(
                limited(&server, "b").await,
                "a failed fetch keeps the old limits"
            );
            let reload_errors = server
                .metrics()
                .config_reloads
                .get_or_create(&ResultLabels { result: "error" })
                .get();
            assert!(reload_errors >= 1);
        };
        tokio::select! {
            _ = poll(&server, &source, every, Some(text)) => unreachable!("polls forever"),
            _ = check => {}
        }
        assert!(ConfigUrl::new("https://x/", every).is_err());
        server.shutdown().await;
    }
}
