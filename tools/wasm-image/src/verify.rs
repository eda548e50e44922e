//! Checking a pulled image and taking the module out of it, the way Istio's Wasm image
//! fetcher does: a Docker schema 2 image (last layer, `plugin.wasm`), else the *compat*
//! variant (one gzipped tar layer, `plugin.wasm`), else the *oci* variant (two layers,
//! the raw module in the `application/vnd.module.wasm.content.layer.v1+wasm` one).
//!
//! Everything here works on bytes; [`fetch_module`] takes its bytes from a [`Source`] so
//! the same checks run against a registry and against in-memory images in tests.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{
    check_module, check_size, media_type, Descriptor, Manifest, MAX_CONFIG_BYTES, MAX_LAYER_BYTES,
    MAX_MANIFEST_BYTES, MAX_MODULE_BYTES, MODULE_FILE,
};
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

/// Largest uncompressed tar layer read while looking for `plugin.wasm` (a gzip bomb stops
/// here).
pub const MAX_UNCOMPRESSED_LAYER_BYTES: u64 = 4 * MAX_LAYER_BYTES;

/// How an image holds its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// One `application/vnd.oci.image.layer.v1.tar+gzip` layer with `plugin.wasm`.
    Compat,
    /// A Docker schema 2 image whose last layer (tar+gzip) has `plugin.wasm`.
    Docker,
    /// Two layers, one of them the raw module
    /// (`application/vnd.module.wasm.content.layer.v1+wasm`).
    Oci,
}

/// Where [`fetch_module`] gets an image's manifest and blobs.
pub(crate) trait Source {
    /// The raw manifest.
    async fn manifest(&self) -> Result<Vec<u8>>;
    /// The blob `desc` refers to; fails with [`Error::TooLarge`] once more than `max` bytes
    /// arrive.
    async fn blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>>;
}

/// Fetches an image from `source`, checks the manifest digest against `expected` (when
/// given), the config's and the module layer's digests and sizes against the manifest,
/// and returns the module (checked for the Wasm magic and size).
pub(crate) async fn fetch_module<S: Source>(
    source: &S,
    expected: Option<&Digest>,
) -> Result<(Variant, Vec<u8>)> {
    let manifest = parse_manifest(&source.manifest().await?, expected)?;
    let (variant, layer) = select_layer(&manifest)?;
    // The config is only verified: the module is all Envoy loads.
    fetch_blob(source, "config", &manifest.config, MAX_CONFIG_BYTES).await?;
    let blob = fetch_blob(source, "layer", layer, MAX_LAYER_BYTES).await?;
    let module = extract_module(variant, layer, blob)?;
    check_module(&module)?;
    Ok((variant, module))
}

async fn fetch_blob<S: Source>(
    source: &S,
    kind: &str,
    desc: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>> {
    let what = format!("{kind} {}", desc.digest);
    check_size(&what, desc.size, limit)?;
    let data = source.blob(desc, desc.size).await?;
    verify_blob(&what, desc, &data)?;
    Ok(data)
}

/// Checks the manifest's size, its digest against `expected`, that it is a
/// single-platform image manifest (OCI or Docker schema 2), and parses it.
pub(crate) fn parse_manifest(raw: &[u8], expected: Option<&Digest>) -> Result<Manifest> {
    check_size("manifest", raw.len() as u64, MAX_MANIFEST_BYTES)?;
    if let Some(expected) = expected {
        let actual = Digest::of(raw);
        if actual != *expected {
            return Err(Error::DigestMismatch {
                what: "manifest".into(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        schema_version: Option<u64>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_slice(raw)
        .map_err(|e| Error::InvalidManifest(format!("not a JSON manifest: {e}")))?;
    match head.media_type.as_deref() {
        Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST) => {
            return Err(index_error());
        }
        None if head.manifests.is_some() => return Err(index_error()),
        None | Some(media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST) => {}
        Some(other) => {
            return Err(Error::InvalidManifest(format!(
                "media type {other}, expected {} or {}",
                media_type::OCI_MANIFEST,
                media_type::DOCKER_MANIFEST
            )));
        }
    }
    if head.schema_version != Some(2) {
        return Err(Error::InvalidManifest(format!(
            "schemaVersion {}, expected 2",
            head.schema_version
                .map_or("missing".to_string(), |v| v.to_string())
        )));
    }
    serde_json::from_slice(raw).map_err(|e| Error::InvalidManifest(e.to_string()))
}

fn index_error() -> Error {
    Error::InvalidManifest(
        "an image index (multi-platform), not an image; use the digest of the Wasm image's own manifest"
            .into(),
    )
}

/// The layer holding the module and the variant, in the order Istio tries them.
pub(crate) fn select_layer(manifest: &Manifest) -> Result<(Variant, &Descriptor)> {
    let layers = &manifest.layers;
    if manifest.media_type.as_deref() == Some(media_type::DOCKER_MANIFEST) {
        let last = layers
            .last()
            .ok_or_else(|| Error::UnsupportedImage("a Docker image with no layers".into()))?;
        if last.media_type != media_type::DOCKER_LAYER_TAR_GZIP {
            return Err(Error::UnsupportedImage(format!(
                "the last layer of a Docker image is {}, expected {}",
                last.media_type,
                media_type::DOCKER_LAYER_TAR_GZIP
            )));
        }
        return Ok((Variant::Docker, last));
    }
    let found = match layers.as_slice() {
        [only] if only.media_type == media_type::OCI_LAYER_TAR_GZIP => {
            Some((Variant::Compat, only))
        }
        [_, _] => layers
            .iter()
            .find(|l| l.media_type == media_type::WASM_CONTENT_LAYER)
            .map(|l| (Variant::Oci, l)),
        _ => None,
    };
    found.ok_or_else(|| {
        let got: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
        Error::UnsupportedImage(format!(
            "expected one {} layer (compat variant) or two layers, one {} (oci variant); got layers {got:?}",
            media_type::OCI_LAYER_TAR_GZIP,
            media_type::WASM_CONTENT_LAYER,
        ))
    })
}

/// Checks `data` against its descriptor: digest first, then size.
pub(crate) fn verify_blob(what: &str, desc: &Descriptor, data: &[u8]) -> Result<()> {
    let actual = Digest::of(data);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    if data.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            what: what.to_string(),
            expected: desc.size,
            actual: data.len() as u64,
        });
    }
    Ok(())
}

/// The module inside a verified layer.
pub(crate) fn extract_module(
    variant: Variant,
    desc: &Descriptor,
    blob: Vec<u8>,
) -> Result<Vec<u8>> {
    match variant {
        Variant::Oci => Ok(blob),
        Variant::Compat | Variant::Docker => {
            module_from_tar_gz(&blob).map_err(|reason| Error::InvalidLayer {
                digest: desc.digest.clone(),
                reason,
            })
        }
    }
}

/// The first regular file named `plugin.wasm` (in any directory) of a gzipped tar.
fn module_from_tar_gz(blob: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let tar = Limited::new(
        flate2::read::GzDecoder::new(blob),
        MAX_UNCOMPRESSED_LAYER_BYTES,
    );
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzipped tar: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("not a gzipped tar: {e}"))?;
        let header = entry.header();
        let is_module = header.entry_type().is_file()
            && entry
                .path()
                .is_ok_and(|p| p.file_name() == Some(Path::new(MODULE_FILE).as_os_str()));
        if !is_module {
            continue;
        }
        let size = entry.size();
        if size > MAX_MODULE_BYTES {
            return Err(format!(
                "{MODULE_FILE} is {size} bytes, over the limit of {MAX_MODULE_BYTES}"
            ));
        }
        let mut module = Vec::with_capacity(size as usize);
        entry
            .take(MAX_MODULE_BYTES)
            .read_to_end(&mut module)
            .map_err(|e| format!("reading {MODULE_FILE}: {e}"))?;
        return Ok(module);
    }
    Err(format!("no regular file named {MODULE_FILE} in the layer"))
}

/// A reader that fails once more than `limit` bytes were read through it.
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R> Limited<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Allow one byte past the limit to tell "exactly at" from "over".
        let max = buf
            .len()
            .min(usize::try_from(self.left + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "uncompressed layer is over the limit of {} bytes",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{build_image, tests::MODULE, Blob, Image};
    use std::collections::{BTreeMap, HashMap};

    /// An image in memory; `blobs` by digest.
    struct Mem {
        manifest: Vec<u8>,
        blobs: HashMap<Digest, Vec<u8>>,
    }

    impl Mem {
        fn of(image: &Image) -> Self {
            Self {
                manifest: image.manifest.data.clone(),
                blobs: [&image.layer, &image.config]
                    .into_iter()
                    .map(|b| (b.digest.clone(), b.data.clone()))
                    .collect(),
            }
        }

        /// An image from its parts: the config and layers are stored as given, the
        /// manifest lists them with their real digests.
        fn assemble(manifest_media_type: Option<&str>, layers: &[(&str, Vec<u8>)]) -> Self {
            let config = blob(media_type::OCI_CONFIG, b"{}".to_vec());
            let layers: Vec<Blob> = layers.iter().map(|(t, d)| blob(t, d.clone())).collect();
            let manifest = Manifest {
                schema_version: 2,
                media_type: manifest_media_type.map(str::to_string),
                config: config.descriptor(),
                layers: layers.iter().map(Blob::descriptor).collect(),
                annotations: BTreeMap::new(),
            };
            Self {
                manifest: serde_json::to_vec(&manifest).unwrap(),
                blobs: layers
                    .iter()
                    .chain([&config])
                    .map(|b| (b.digest.clone(), b.data.clone()))
                    .collect(),
            }
        }
    }

    fn blob(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: Digest::of(&data),
            data,
        }
    }

    impl Source for Mem {
        async fn manifest(&self) -> Result<Vec<u8>> {
            Ok(self.manifest.clone())
        }
        async fn blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
            let data = self.blobs.get(&desc.digest).cloned().unwrap_or_default();
            check_size("blob", data.len() as u64, max)?;
            Ok(data)
        }
    }

    fn fetch(source: &Mem, expected: Option<&Digest>) -> Result<(Variant, Vec<u8>)> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fetch_module(source, expected))
    }

    fn tar_gz(path: &str, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header, path, data).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn built_image_round_trips_with_and_without_expected_digest() {
        let image = build_image(MODULE).unwrap();
        let mem = Mem::of(&image);
        assert_eq!(
            fetch(&mem, None).unwrap(),
            (Variant::Compat, MODULE.to_vec())
        );
        assert_eq!(
            fetch(&mem, Some(image.digest())).unwrap(),
            (Variant::Compat, MODULE.to_vec())
        );
    }

    #[test]
    fn wrong_expected_manifest_digest_names_both_digests() {
        let image = build_image(MODULE).unwrap();
        let wrong = Digest::of(b"another manifest");
        let err = fetch(&Mem::of(&image), Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest digest mismatch"), "{err}");
        assert!(err.contains(wrong.as_str()), "{err}");
        assert!(err.contains(image.digest().as_str()), "{err}");
    }

    #[test]
    fn tampered_layer_is_refused_by_its_digest() {
        let image = build_image(MODULE).unwrap();
        let mut mem = Mem::of(&image);
        let layer = mem.blobs.get_mut(&image.layer.digest).unwrap();
        let last = layer.len() - 1;
        layer[last] ^= 1;
        let tampered = Digest::of(layer);
        match fetch(&mem, Some(image.digest())).unwrap_err() {
            Error::DigestMismatch {
                what,
                expected,
                actual,
            } => {
                assert_eq!(what, format!("layer {}", image.layer.digest));
                assert_eq!(expected, image.layer.digest);
                assert_eq!(actual, tampered);
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn tampered_config_is_refused_by_its_digest() {
        let image = build_image(MODULE).unwrap();
        let mut mem = Mem::of(&image);
        mem.blobs
            .insert(image.config.digest.clone(), b"{}".to_vec());
        let err = fetch(&mem, None).unwrap_err();
        assert!(
            matches!(&err, Error::DigestMismatch { what, .. } if what.starts_with("config ")),
            "{err}"
        );
    }

    #[test]
    fn oversized_layer_is_refused_before_download() {
        let image = build_image(MODULE).unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
        manifest["layers"][0]["size"] = (MAX_LAYER_BYTES + 1).into();
        let mem = Mem {
            manifest: serde_json::to_vec(&manifest).unwrap(),
            ..Mem::of(&image)
        };
        let err = fetch(&mem, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    limit: MAX_LAYER_BYTES,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn docker_variant_takes_plugin_wasm_from_the_last_layer() {
        let mem = Mem::assemble(
            Some(media_type::DOCKER_MANIFEST),
            &[
                (media_type::DOCKER_LAYER_TAR_GZIP, tar_gz("etc/motd", b"hi")),
                (
                    media_type::DOCKER_LAYER_TAR_GZIP,
                    tar_gz("./some/dir/plugin.wasm", MODULE),
                ),
            ],
        );
        assert_eq!(
            fetch(&mem, None).unwrap(),
            (Variant::Docker, MODULE.to_vec())
        );
    }

    #[test]
    fn oci_variant_takes_the_raw_wasm_layer() {
        let mem = Mem::assemble(
            Some(media_type::OCI_MANIFEST),
            &[
                ("application/vnd.module.wasm.config.v1+json", b"{}".to_vec()),
                (media_type::WASM_CONTENT_LAYER, MODULE.to_vec()),
            ],
        );
        assert_eq!(fetch(&mem, None).unwrap(), (Variant::Oci, MODULE.to_vec()));
    }

    #[test]
    fn non_wasm_content_is_refused_after_extraction() {
        let mem = Mem::assemble(
            None,
            &[(
                media_type::OCI_LAYER_TAR_GZIP,
                tar_gz("plugin.wasm", b"#!/bin/sh"),
            )],
        );
        assert!(matches!(fetch(&mem, None), Err(Error::NotWasm { .. })));
    }

    #[test]
    fn layer_without_plugin_wasm_is_refused() {
        let mem = Mem::assemble(
            None,
            &[(
                media_type::OCI_LAYER_TAR_GZIP,
                tar_gz("module.wasm", MODULE),
            )],
        );
        let err = fetch(&mem, None).unwrap_err().to_string();
        assert!(err.contains("no regular file named plugin.wasm"), "{err}");
    }

    #[test]
    fn other_layouts_and_indexes_are_refused() {
        let three = Mem::assemble(
            None,
            &[
                (
                    media_type::OCI_LAYER_TAR_GZIP,
                    tar_gz("plugin.wasm", MODULE),
                ),
                (
                    media_type::OCI_LAYER_TAR_GZIP,
                    tar_gz("plugin.wasm", MODULE),
                ),
                (media_type::WASM_CONTENT_LAYER, MODULE.to_vec()),
            ],
        );
        assert!(matches!(
            fetch(&three, None),
            Err(Error::UnsupportedImage(_))
        ));

        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            media_type::OCI_INDEX
        );
        let err = parse_manifest(index.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image index"), "{err}");
        assert!(parse_manifest(b"not json", None).is_err());
    }

    #[test]
    fn limited_reader_fails_past_its_limit() {
        let mut out = Vec::new();
        assert!(Limited::new(&[0u8; 10][..], 10)
            .read_to_end(&mut out)
            .is_ok());
        assert!(Limited::new(&[0u8; 11][..], 10)
            .read_to_end(&mut out)
            .is_err());
    }
}
