//! Free loopback ports for the services a test starts.
//!
//! A port is picked, checked free and released before the service binds it, so two things
//! must not take it in between: another test of this process (ports are handed out once per
//! process, in turn) and the kernel's ephemeral ports for outgoing connections (ports come
//! from below the ephemeral range, 32768–60999 on Linux by default).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports handed out: [`FIRST`, `FIRST + SPAN`).
const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;

/// The next candidate, as an offset into the span; starts where the process id points so
/// test processes running side by side start far apart.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

fn next_candidate() -> u16 {
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
    (FIRST + offset) as u16
}

/// A loopback port that is free now and not handed out before by this process.
pub fn free_port() -> u16 {
    for _ in 0..SPAN {
        let port = next_candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: std::collections::HashSet<u16> = (0..500).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 500);
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
    }
}
