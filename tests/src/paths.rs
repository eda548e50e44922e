//! Where the binaries and modules under test live.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Envoy binary: `$MESHWARDEN_ENVOY`, else the pinned one in `.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("MESHWARDEN_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// The `meshwarden` binary: `$MESHWARDEN_BIN`, else next to the running test's target dir.
pub fn meshwarden_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHWARDEN_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    profile_dir.join("meshwarden")
}

/// The directory of built filter modules: `$MESHWARDEN_WASM_DIR`, else `target/filters`.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("MESHWARDEN_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/filters"))
}
