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
        let mut modules = Vec::with_capacity(Kind::ALL.len());
        let mut stamps = Vec::with_capacity(Kind::ALL.len());
        for kind in Kind::ALL {
            let path = module_path(wasm_dir.as_ref(), kind);
            let (stamp, sha256) = read_module(&path, kind)?;
            modules.push(ModuleInfo { kind, path, sha256 });
            stamps.push(stamp);
        }
        let current = ModuleSet::new(modules).expect("one module per kind");
        Ok(Self {
            current: Arc::new(current),
            stamps,
        })
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
            let stamp = stamp_of(&module.path, module.kind)?;
            if stamp == stamps[i] {
                continue;
            }
            let (stamp, sha256) = read_module(&module.path, module.kind)?;
            stamps[i] = stamp;
            if sha256 != module.sha256 {
                module.sha256 = sha256;
                changed = true;
            }
        }
        self.stamps = stamps;
        if changed {
            self.current = Arc::new(ModuleSet::new(next).expect("one module per kind"));
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

fn read_module(path: &Path, kind: Kind) -> Result<(Stamp, String), ModuleError> {
    let stamp = stamp_of(path, kind)?;
    let mut file = std::fs::File::open(path).map_err(read_error(path, kind))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read_error(path, kind))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((stamp, hex::encode(hasher.finalize())))
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
