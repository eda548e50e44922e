//! Building a Wasm module into an OCI image of Istio's *compat* variant, and writing it as
//! an OCI image layout directory.
//!
//! The image is byte-for-byte deterministic: the same module always gives the same layer,
//! config and manifest, hence the same manifest digest (the value a `WasmPlugin.sha256`
//! pins for an `oci://` URL).

use crate::digest::Digest;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The WebAssembly binary magic, `\0asm`.
pub const WASM_MAGIC: [u8; 4] = *b"\0asm";
/// Largest module accepted, built or pulled.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Largest layer (as stored, compressed) accepted on pull.
pub const MAX_LAYER_BYTES: u64 = 256 << 20;
/// Largest manifest accepted on pull (the OCI distribution spec's suggested minimum that
/// registries accept).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted on pull.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The file holding the module inside a compat or Docker image layer.
pub const MODULE_FILE: &str = "plugin.wasm";
/// The manifest annotation that names the Wasm image variant.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// Media types of the image formats Istio's Wasm image fetcher understands.
pub mod media_type {
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index (multi-platform); not a Wasm image by itself.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An OCI gzipped tar layer (the compat variant's only layer).
    pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker manifest list (multi-platform); not a Wasm image by itself.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker gzipped tar layer.
    pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// The raw module layer of the *oci* (artifact) variant.
    pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
}

/// Checks that `module` starts with the Wasm magic and is within [`MAX_MODULE_BYTES`].
pub fn check_module(module: &[u8]) -> Result<()> {
    check_size("module", module.len() as u64, MAX_MODULE_BYTES)?;
    if !module.starts_with(&WASM_MAGIC) {
        let head = &module[..module.len().min(WASM_MAGIC.len())];
        let found = if head.is_empty() {
            "nothing (empty input)".to_string()
        } else {
            head.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(Error::NotWasm { found });
    }
    Ok(())
}

/// Fails with [`Error::TooLarge`] if `size` is over `limit`.
pub(crate) fn check_size(what: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

/// Content with its media type and digest: a layer, a config or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The media type it is pushed and referenced with.
    pub media_type: String,
    /// The digest of `data`.
    pub digest: Digest,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: Digest::of(&data),
            data,
        }
    }

    /// Length of the data in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    pub(crate) fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A Wasm module as an OCI image of the compat variant: one gzipped tar layer holding
/// `plugin.wasm`, a minimal config, and the manifest that references both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The layer: a gzipped tar with the single file `plugin.wasm`.
    pub layer: Blob,
    /// The image config.
    pub config: Blob,
    /// The image manifest; its digest identifies the image.
    pub manifest: Blob,
}

impl Image {
    /// The manifest digest: what `@sha256:` references and Istio's `WasmPlugin.sha256`
    /// (as [`Digest::hex`]) pin.
    pub fn digest(&self) -> &Digest {
        &self.manifest.digest
    }
}

/// A content descriptor (OCI image spec): what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest, OCI or Docker schema 2 (the same shape). Field order is the
/// serialization order, so built manifests are byte-stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The minimal valid OCI image config for a Wasm module.
#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a Digest; 1],
}

/// Builds the compat-variant image of `module`. Refuses input that is not a Wasm module
/// or is over [`MAX_MODULE_BYTES`]. Deterministic: the same module gives the same digests.
pub fn build_image(module: &[u8]) -> Result<Image> {
    check_module(module)?;
    let tar = module_tar(module)?;
    let diff_id = Digest::of(&tar);
    let layer = Blob::new(media_type::OCI_LAYER_TAR_GZIP, gzip(&tar)?);
    let config = Blob::new(
        media_type::OCI_CONFIG,
        to_json(&ImageConfig {
            architecture: "wasm",
            os: "wasip1",
            rootfs: RootFs {
                kind: "layers",
                diff_ids: [&diff_id],
            },
        })?,
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_string()),
        config: config.descriptor(),
        layers: vec![layer.descriptor()],
        annotations: [(VARIANT_ANNOTATION.to_string(), "compat".to_string())].into(),
    };
    let manifest = Blob::new(media_type::OCI_MANIFEST, to_json(&manifest)?);
    Ok(Image {
        layer,
        config,
        manifest,
    })
}

/// A tar archive with the single entry `plugin.wasm`: mode 0644, uid/gid 0, mtime 0, no
/// user or group names.
fn module_tar(module: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(MODULE_FILE)
        .map_err(Error::io("tar header"))?;
    header.set_size(module.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(&header, module)
        .map_err(Error::io("write the layer tar"))?;
    builder
        .into_inner()
        .map_err(Error::io("finish the layer tar"))
}

/// Gzip with a fixed header: no name, mtime 0, OS "unknown" (255), best compression.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).map_err(Error::io("gzip the layer"))?;
    enc.finish().map_err(Error::io("gzip the layer"))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    // Serializing these plain structs cannot fail; map it anyway rather than panic.
    serde_json::to_vec(value).map_err(|e| Error::Io {
        context: "serialize JSON".into(),
        error: e.into(),
    })
}

/// `oci-layout` file content.
const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The index annotation naming a manifest in an image layout (`oci:DIR:TAG`).
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: [Descriptor; 1],
}

/// Writes `image` as an OCI image layout in `dir` (created if missing): `oci-layout`,
/// `index.json` (replaced; its one manifest is annotated with `tag` as
/// `org.opencontainers.image.ref.name`) and `blobs/sha256/<hex>`. Tools such as
/// `skopeo copy oci:DIR[:TAG] docker://…` can push it from there.
pub fn write_oci_layout(image: &Image, dir: &Path, tag: &str) -> Result<()> {
    check_tag(tag)?;
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(Error::io(format!("create {}", blobs.display())))?;
    for blob in [&image.layer, &image.config, &image.manifest] {
        write_file(&blobs.join(blob.digest.hex()), &blob.data)?;
    }
    let mut manifest = image.manifest.descriptor();
    manifest
        .annotations
        .insert(REF_NAME_ANNOTATION.to_string(), tag.to_string());
    let index = Index {
        schema_version: 2,
        media_type: media_type::OCI_INDEX,
        manifests: [manifest],
    };
    write_file(&dir.join("index.json"), &to_json(&index)?)?;
    write_file(&dir.join("oci-layout"), OCI_LAYOUT.as_bytes())
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(Error::io(format!("write {}", path.display())))
}

/// Checks a tag against the distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<()> {
    let ok = tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidReference {
            reference: tag.to_string(),
            reason: "a tag is 1-128 of A-Z a-z 0-9 _ . - and does not start with . or -".into(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny valid-looking module: the magic, version 1, nothing else.
    pub(crate) const MODULE: &[u8] = b"\0asm\x01\x00\x00\x00";

    #[test]
    fn same_module_gives_same_digests() {
        let a = build_image(MODULE).unwrap();
        let b = build_image(MODULE).unwrap();
        assert_eq!(a, b);
        let c = build_image(b"\0asm\x01\x00\x00\x00\x00").unwrap();
        assert_ne!(a.digest(), c.digest());
    }

    /// The bytes of an image must not drift between builds or releases of this tool: a
    /// changed digest breaks every `WasmPlugin.sha256` pinned to it.
    #[test]
    fn digest_is_pinned() {
        assert_eq!(
            build_image(MODULE).unwrap().digest().as_str(),
            "sha256:38b74a6563fb7eca0844d1c11ac28623f7ff928f1557e0e1d7f780a367677058"
        );
    }

    #[test]
    fn non_wasm_and_empty_input_are_refused() {
        let err = build_image(b"\x7fELF\x02\x01").unwrap_err();
        assert!(
            matches!(&err, Error::NotWasm { found } if found == "7f 45 4c 46"),
            "{err}"
        );
        assert!(matches!(build_image(b""), Err(Error::NotWasm { .. })));
        assert!(matches!(build_image(b"\0as"), Err(Error::NotWasm { .. })));
    }

    #[test]
    fn manifest_is_the_compat_variant() {
        let image = build_image(MODULE).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], media_type::OCI_MANIFEST);
        assert_eq!(m["annotations"][VARIANT_ANNOTATION], "compat");
        assert_eq!(m["config"]["mediaType"], media_type::OCI_CONFIG);
        assert_eq!(m["config"]["digest"], image.config.digest.as_str());
        assert_eq!(m["config"]["size"], image.config.size());
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], media_type::OCI_LAYER_TAR_GZIP);
        assert_eq!(layers[0]["digest"], image.layer.digest.as_str());

        // The config's diff_id is the digest of the uncompressed tar.
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&image.layer.data[..]),
            &mut tar,
        )
        .unwrap();
        let c: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(c["architecture"], "wasm");
        assert_eq!(c["os"], "wasip1");
        assert_eq!(c["rootfs"]["diff_ids"][0], Digest::of(&tar).as_str());

        // One entry, plugin.wasm, with the fixed metadata.
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<_> = archive.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        let h = entries[0].header();
        assert_eq!(h.path().unwrap().to_str(), Some(MODULE_FILE));
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
            (0, 0, 0)
        );
    }

    #[test]
    fn layout_has_index_layout_file_and_blobs() {
        let image = build_image(MODULE).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_oci_layout(&image, dir.path(), "0.1.0").unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.digest().as_str());
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "0.1.0"
        );
        assert!(dir.path().join("oci-layout").is_file());
        for blob in [&image.layer, &image.config, &image.manifest] {
            let path = dir.path().join("blobs/sha256").join(blob.digest.hex());
            assert_eq!(std::fs::read(path).unwrap(), blob.data);
        }
        assert!(write_oci_layout(&image, dir.path(), "-bad").is_err());
    }
}
