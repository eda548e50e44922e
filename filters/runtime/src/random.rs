//! Random bytes for ids and sampling: the host's random source (WASI `random_get`), falling back
//! to a time-seeded SplitMix64 stream if the host ever refuses. Never panics.

use meshwarden_common::random::{mix64, Random};
use std::cell::Cell;

thread_local! {
    static FALLBACK: Cell<u64> = const { Cell::new(0) };
}

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    if crate::host::host().random(buf) {
        return;
    }
    FALLBACK.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        for chunk in buf.chunks_mut(8) {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let v = mix64(s).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        state.set(s);
    });
}

/// A uniformly distributed `u64`.
pub fn next_u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

/// The host's random generator as a [`Random`].
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRandom;

impl Random for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        fill(buf);
    }
}

fn seed() -> u64 {
    let nanos = crate::host::host().now_ns();
    // Mix in a stack address so two VMs started in the same nanosecond still differ.
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}
