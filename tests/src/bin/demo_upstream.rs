//! Demo upstream for `make run`: echoes every request as JSON.
//! Usage: `demo-upstream [ADDR]` (default 127.0.0.1:18080).

use meshwarden_e2e::EchoUpstream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let upstream = EchoUpstream::start_on(addr.parse()?).await?;
    eprintln!("demo upstream listening on http://{}", upstream.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
