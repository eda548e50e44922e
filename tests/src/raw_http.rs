//! Raw HTTP/1.1 over TCP, for requests an HTTP client library refuses to build: header
//! values with arbitrary bytes, oversized or heavily repeated headers.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest answer read back (status line and headers are what the tests look at).
const MAX_ANSWER: usize = 64 * 1024;

/// A `GET path` with `headers` (raw bytes), `Host: localhost` and `Connection: close`.
pub fn get_request(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Sends `request` to `127.0.0.1:port` and returns the answer's status (within 10 s).
pub async fn send(port: u16, request: &[u8]) -> anyhow::Result<u16> {
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        // The proxy may answer (431) and close before it has read everything.
        let _ = tcp.write_all(request).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < MAX_ANSWER && !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        anyhow::Ok(out)
    })
    .await??;
    answer
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no HTTP answer: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            )
        })
}
