//! The Wasm module the ECDS resources point Envoy at: `meshwarden.wasm` in a directory —
//! every stage in one module, run in one pass (the combined filter) or one stage per root id
//! (separate filters sharing one VM) — identified by absolute path and SHA-256 so a rebuilt
//! module changes the resource versions (and reaches Envoy) while an untouched one does not.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// File name of the module in the wasm directory.
pub const MODULE_FILE: &str = "meshwarden.wasm";

/// Why the module could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("wasm module {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The module as a snapshot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Absolute path handed to Envoy (`vm_config.code.local.filename`).
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file contents.
    pub sha256: String,
}

/// The module every resource of a snapshot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    module: ModuleInfo,
}

impl ModuleSet {
    /// A set of one module.
    pub fn new(module: ModuleInfo) -> Self {
        Self { module }
    }

    /// The module.
    pub fn module(&self) -> &ModuleInfo {
        &self.module
    }
}

/// What was on disk when the module was last hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// Watches the module file of a wasm directory.
#[derive(Debug, Clone)]
pub struct ModuleCatalog {
    current: Arc<ModuleSet>,
    stamp: Stamp,
    /// `<wasm_dir>/meshwarden.wasm`.
    source: PathBuf,
    /// Content-addressed copies (`<sha256>.wasm`) advertised instead of the source.
    cache: Option<PathBuf>,
}

/// Module files kept in the cache; older ones are removed.
pub const CACHED_MODULES: usize = 32;

/// The cached copy of the module with hash `sha256` in `cache`, if the hash is well formed.
pub fn cached_module(cache: &Path, sha256: &str) -> Option<PathBuf> {
    let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| cache.join(format!("{sha256}.wasm")))
}

/// `<wasm_dir>/meshwarden.wasm`, made absolute.
pub fn module_path(wasm_dir: &Path) -> PathBuf {
    let path = wasm_dir.join(MODULE_FILE);
    std::path::absolute(&path).unwrap_or(path)
}

impl ModuleCatalog {
    /// Reads and hashes the module in `wasm_dir`. A missing or unreadable module is an
    /// error naming its path.
    pub fn load(wasm_dir: impl AsRef<Path>) -> Result<Self, ModuleError> {
        Self::load_cached(wasm_dir, None)
    }

    /// [`ModuleCatalog::load`], copying every module version into `cache` as
    /// `<sha256>.wasm` and advertising that immutable copy: a configuration keeps loading
    /// the module it was composed with even after `wasm_dir` changes (a remembered
    /// last-good configuration, a proxy reading the file while it is rebuilt).
    pub fn load_cached(
        wasm_dir: impl AsRef<Path>,
        cache: Option<PathBuf>,
    ) -> Result<Self, ModuleError> {
        if let Some(dir) = &cache {
            std::fs::create_dir_all(dir).map_err(read_error(dir))?;
        }
        let source = module_path(wasm_dir.as_ref());
        let (stamp, sha256, path) = read_module(&source, cache.as_deref())?;
        let catalog = Self {
            current: Arc::new(ModuleSet::new(ModuleInfo { path, sha256 })),
            stamp,
            source,
            cache,
        };
        catalog.prune_cache();
        Ok(catalog)
    }

    /// Removes all but the newest [`CACHED_MODULES`] cached copies (never the current one).
    fn prune_cache(&self) {
        let Some(dir) = &self.cache else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(CACHED_MODULES);
        for (_, path) in files.into_iter().take(excess) {
            if self.current.module.path != path {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The module as last read.
    pub fn current(&self) -> Arc<ModuleSet> {
        self.current.clone()
    }

    /// Re-hashes the module if its size or modification time changed. Returns whether the
    /// hash changed. On error (e.g. the module was deleted mid-rebuild) the previous state
    /// is kept, so the next call retries.
    pub fn refresh(&mut self) -> Result<bool, ModuleError> {
        let stamp = stamp_of(&self.source)?;
        if stamp == self.stamp {
            return Ok(false);
        }
        let (stamp, sha256, path) = read_module(&self.source, self.cache.as_deref())?;
        self.stamp = stamp;
        if sha256 == self.current.module.sha256 {
            return Ok(false);
        }
        self.current = Arc::new(ModuleSet::new(ModuleInfo { path, sha256 }));
        self.prune_cache();
        Ok(true)
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn stamp_of(path: &Path) -> Result<Stamp, ModuleError> {
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    Ok(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Reads and hashes a module; with a cache, makes sure `<cache>/<sha256>.wasm` holds these
/// very bytes and returns that path (else the source path).
fn read_module(path: &Path, cache: Option<&Path>) -> Result<(Stamp, String, PathBuf), ModuleError> {
    let stamp = stamp_of(path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(read_error(path))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let Some(cache) = cache else {
        return Ok((stamp, sha256, path.to_path_buf()));
    };
    let cached = cached_module(cache, &sha256).expect("a sha256 is 64 hex digits");
    if !cached.exists() {
        let tmp = cache.join(format!(".{sha256}.tmp"));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &cached))
            .map_err(read_error(&cached))?;
    }
    Ok((stamp, sha256, cached))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Writes a fake module (`fake module` contents) into `dir`.
    pub fn write_fake_modules(dir: &Path) {
        std::fs::write(module_path(dir), "fake module").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::write_fake_modules;
    use super::*;

    #[test]
    fn loads_absolute_paths_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let catalog = ModuleCatalog::load(dir.path()).unwrap();
        let set = catalog.current();
        let m = set.module();
        assert!(m.path.is_absolute());
        assert!(m.path.ends_with(MODULE_FILE));
        assert_eq!(m.sha256, hex::encode(Sha256::digest(b"fake module")));
    }

    #[test]
    fn cached_copies_are_immutable_and_advertised() {
        let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_fake_modules(dir.path());
        let mut catalog =
            ModuleCatalog::load_cached(dir.path(), Some(cache.path().to_path_buf())).unwrap();
        let before = catalog.current().module().clone();
        assert_eq!(
            before.path,
            cache.path().join(format!("{}.wasm", before.sha256))
        );
        std::fs::write(dir.path().join(MODULE_FILE), b"v2").unwrap();
        assert!(catalog.refresh().unwrap());
        let after = catalog.current().module().clone();
        assert_ne!(after.path, before.path);
        // The old version stays loadable under its own hash.
        assert_eq!(std::fs::read(&before.path).unwrap(), b"fake module");
        assert_eq!(std::fs::read(&after.path).unwrap(), b"v2");
        assert_eq!(cached_module(cache.path(), "../x"), None);
    }

    #[test]
    fn missing_module_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModuleCatalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(MODULE_FILE), "{err}");
    }

    #[test]
    fn refresh_reports_content_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let mut catalog = ModuleCatalog::load(dir.path()).unwrap();
        assert!(!catalog.refresh().unwrap());
        let before = catalog.current();
        std::fs::write(dir.path().join(MODULE_FILE), b"rebuilt module").unwrap();
        assert!(catalog.refresh().unwrap());
        let after = catalog.current();
        assert_ne!(before.module().sha256, after.module().sha256);
        // Same bytes rewritten: stamp may change, hash does not.
        std::fs::write(dir.path().join(MODULE_FILE), b"rebuilt module").unwrap();
        assert!(!catalog.refresh().unwrap());
        // A deleted module is an error and leaves the state alone.
        std::fs::remove_file(dir.path().join(MODULE_FILE)).unwrap();
        assert!(catalog.refresh().is_err());
        assert_eq!(catalog.current(), after);
    }
}
