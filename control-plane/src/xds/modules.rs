//! The Wasm modules the ECDS resources point Envoy at: one `meshwarden_<filter>.wasm` per
//! kind in a directory, identified by absolute path and SHA-256 so a rebuilt module changes
//! the resource versions (and reaches Envoy) while an untouched one does not.

use meshwarden_common::Kind;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Why a module could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("wasm module {path} for the {filter} filter cannot be read: {source}")]
    Read {
        path: PathBuf,
        filter: &'static str,
        source: std::io::Error,
    },
}

/// One filter module as the snapshot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub kind: Kind,
    /// Absolute path handed to Envoy (`vm_config.code.local.filename`).
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file contents.
    pub sha256: String,
}

/// The modules of every kind, in [`Kind::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    modules: Vec<ModuleInfo>,
}

impl ModuleSet {
    /// Builds a set from explicit entries (one per kind, any order). Kinds without an entry
    /// are an error, so every resource has a module.
    pub fn new(mut modules: Vec<ModuleInfo>) -> Option<Self> {
        modules.sort_by_key(|m| m.kind);
        modules.dedup_by_key(|m| m.kind);
        (modules.len() == Kind::ALL.len()).then_some(Self { modules })
    }

    /// The module of one kind.
    pub fn get(&self, kind: Kind) -> &ModuleInfo {
        // `new` guarantees one entry per kind, sorted like `Kind::ALL` (declaration order).
        &self.modules[kind_index(kind)]
    }

    /// Every module, in [`Kind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = &ModuleInfo> {
        self.modules.iter()
    }
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("Kind::ALL lists every kind")
}

/// What was on disk when a module was last hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// Watches the module files of a wasm directory.
#[derive(Debug, Clone)]
pub struct ModuleCatalog {
    current: Arc<ModuleSet>,
    stamps: Vec<Stamp>,
    /// `<wasm_dir>/meshwarden_<filter>.wasm`, in [`Kind::ALL`] order.
    sources: Vec<PathBuf>,
    /// Content-addressed copies (`<sha256>.wasm`) advertised instead of the sources.
    cache: Option<PathBuf>,
}

/// Module files kept in the cache; older ones are removed.
pub const CACHED_MODULES: usize = 32;

/// The cached copy of the module with hash `sha256` in `cache`, if the hash is well formed.
pub fn cached_module(cache: &Path, sha256: &str) -> Option<PathBuf> {
    let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| cache.join(format!("{sha256}.wasm")))
}

/// `<wasm_dir>/meshwarden_<filter>.wasm`, made absolute.
pub fn module_path(wasm_dir: &Path, kind: Kind) -> PathBuf {
    let path = wasm_dir.join(format!("meshwarden_{}.wasm", kind.filter()));
    std::path::absolute(&path).unwrap_or(path)
}

impl ModuleCatalog {
    /// Reads and hashes every module in `wasm_dir`. Any missing or unreadable module is an
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
        let mut modules = Vec::with_capacity(Kind::ALL.len());
        let mut stamps = Vec::with_capacity(Kind::ALL.len());
        let mut sources = Vec::with_capacity(Kind::ALL.len());
        if let Some(dir) = &cache {
            std::fs::create_dir_all(dir).map_err(read_error(dir, Kind::TracePolicy))?;
        }
        for kind in Kind::ALL {
            let source = module_path(wasm_dir.as_ref(), kind);
            let (stamp, sha256, path) = read_module(&source, kind, cache.as_deref())?;
            modules.push(ModuleInfo { kind, path, sha256 });
            stamps.push(stamp);
            sources.push(source);
        }
        let current = ModuleSet::new(modules).expect("one module per kind");
        let catalog = Self {
            current: Arc::new(current),
            stamps,
            sources,
            cache,
        };
        catalog.prune_cache();
        Ok(catalog)
    }

    /// Removes all but the newest [`CACHED_MODULES`] cached copies (never a current one).
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
            if self.current.iter().all(|m| m.path != path) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The modules as last read.
    pub fn current(&self) -> Arc<ModuleSet> {
        self.current.clone()
    }

    /// Re-hashes the modules whose size or modification time changed. Returns whether any
    /// hash changed. On error (e.g. a module was deleted mid-rebuild) the previous state is
    /// kept, so the next call retries.
    pub fn refresh(&mut self) -> Result<bool, ModuleError> {
        let mut next = self.current.modules.clone();
        let mut stamps = self.stamps.clone();
        let mut changed = false;
        for (i, module) in next.iter_mut().enumerate() {
            let source = &self.sources[i];
            let stamp = stamp_of(source, module.kind)?;
            if stamp == stamps[i] {
                continue;
            }
            let (stamp, sha256, path) = read_module(source, module.kind, self.cache.as_deref())?;
            stamps[i] = stamp;
            if sha256 != module.sha256 {
                module.sha256 = sha256;
                module.path = path;
                changed = true;
            }
        }
        self.stamps = stamps;
        if changed {
            self.current = Arc::new(ModuleSet::new(next).expect("one module per kind"));
            self.prune_cache();
        }
        Ok(changed)
    }
}

fn read_error(path: &Path, kind: Kind) -> impl FnOnce(std::io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Read {
        path: path.to_path_buf(),
        filter: kind.filter(),
        source,
    }
}

fn stamp_of(path: &Path, kind: Kind) -> Result<Stamp, ModuleError> {
    let meta = std::fs::metadata(path).map_err(read_error(path, kind))?;
    Ok(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Reads and hashes a module; with a cache, makes sure `<cache>/<sha256>.wasm` holds these
/// very bytes and returns that path (else the source path).
fn read_module(
    path: &Path,
    kind: Kind,
    cache: Option<&Path>,
) -> Result<(Stamp, String, PathBuf), ModuleError> {
    let stamp = stamp_of(path, kind)?;
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(read_error(path, kind))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let Some(cache) = cache else {
        return Ok((stamp, sha256, path.to_path_buf()));
    };
    let cached = cached_module(cache, &sha256).expect("a sha256 is 64 hex digits");
    if !cached.exists() {
        let tmp = cache.join(format!(".{sha256}.tmp"));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &cached))
            .map_err(read_error(&cached, kind))?;
    }
    Ok((stamp, sha256, cached))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Writes fake modules (`fake <filter>` contents) into `dir`.
    pub fn write_fake_modules(dir: &Path) {
        for kind in Kind::ALL {
            std::fs::write(module_path(dir, kind), format!("fake {}", kind.filter())).unwrap();
        }
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
        let trace = set.get(Kind::TracePolicy);
        assert!(trace.path.is_absolute());
        assert!(trace.path.ends_with("meshwarden_trace.wasm"));
        assert_eq!(trace.sha256, hex::encode(Sha256::digest(b"fake trace")));
        assert_eq!(set.get(Kind::RateLimitPolicy).kind, Kind::RateLimitPolicy);
    }

    #[test]
    fn cached_copies_are_immutable_and_advertised() {
        let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_fake_modules(dir.path());
        let mut catalog =
            ModuleCatalog::load_cached(dir.path(), Some(cache.path().to_path_buf())).unwrap();
        let before = catalog.current().get(Kind::FaultPolicy).clone();
        assert_eq!(
            before.path,
            cache.path().join(format!("{}.wasm", before.sha256))
        );
        std::fs::write(dir.path().join("meshwarden_fault.wasm"), b"v2").unwrap();
        assert!(catalog.refresh().unwrap());
        let after = catalog.current().get(Kind::FaultPolicy).clone();
        assert_ne!(after.path, before.path);
        // The old version stays loadable under its own hash.
        assert_eq!(std::fs::read(&before.path).unwrap(), b"fake fault");
        assert_eq!(std::fs::read(&after.path).unwrap(), b"v2");
        assert_eq!(cached_module(cache.path(), "../x"), None);
    }

    #[test]
    fn missing_module_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        std::fs::remove_file(dir.path().join("meshwarden_mirror.wasm")).unwrap();
        let err = ModuleCatalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("meshwarden_mirror.wasm"), "{err}");
        assert!(err.contains("mirror filter"), "{err}");
    }

    #[test]
    fn refresh_reports_content_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let mut catalog = ModuleCatalog::load(dir.path()).unwrap();
        assert!(!catalog.refresh().unwrap());
        let before = catalog.current();
        std::fs::write(
            dir.path().join("meshwarden_fault.wasm"),
            b"rebuilt fault module",
        )
        .unwrap();
        assert!(catalog.refresh().unwrap());
        let after = catalog.current();
        assert_ne!(
            before.get(Kind::FaultPolicy).sha256,
            after.get(Kind::FaultPolicy).sha256
        );
        assert_eq!(before.get(Kind::TracePolicy), after.get(Kind::TracePolicy));
        // Same bytes rewritten: stamp may change, hash does not.
        std::fs::write(
            dir.path().join("meshwarden_fault.wasm"),
            b"rebuilt fault module",
        )
        .unwrap();
        assert!(!catalog.refresh().unwrap());
        // A deleted module is an error and leaves the state alone.
        std::fs::remove_file(dir.path().join("meshwarden_fault.wasm")).unwrap();
        assert!(catalog.refresh().is_err());
        assert_eq!(catalog.current(), after);
    }
}
