//! Wasm modules as OCI images that Istio's `WasmPlugin` can pull (`url: oci://…`).
//!
//! [`build_image`] packs a module into Istio's *compat* image variant (the
//! `solo-io/wasm` spec-compat layout): an OCI image manifest with one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, a minimal
//! config and the annotation `module.wasm.image/variant: compat`. The build is
//! deterministic, so a module always has the same manifest digest — the value of
//! `WasmPlugin.sha256` for an `oci://` URL. [`push`] uploads an image, [`pull`] downloads
//! a module back, verifying the manifest and every blob against their digests and
//! accepting the compat, Docker and *oci* variants as Istio does; [`write_oci_layout`]
//! writes an OCI image layout directory for other tools (`skopeo copy oci:DIR …`).
//!
//! ```no_run
//! # async fn demo() -> meshwarden_wasm_image::Result<()> {
//! let module = std::fs::read("target/filters/meshwarden_fault.wasm").expect("module");
//! let image = meshwarden_wasm_image::build_image(&module)?;
//! let digest = meshwarden_wasm_image::push("localhost:5000/meshwarden/fault:0.1.0", &image, true).await?;
//! let pulled = meshwarden_wasm_image::pull(
//!     &format!("localhost:5000/meshwarden/fault@{digest}"), None, true).await?;
//! assert_eq!(pulled, module);
//! # Ok(()) }
//! ```

mod digest;
mod error;
mod image;
mod registry;
mod verify;

pub use digest::Digest;
pub use error::{Error, Result};
pub use image::{
    build_image, check_module, media_type, write_oci_layout, Blob, Image, MAX_CONFIG_BYTES,
    MAX_LAYER_BYTES, MAX_MANIFEST_BYTES, MAX_MODULE_BYTES, MODULE_FILE, VARIANT_ANNOTATION,
    WASM_MAGIC,
};
pub use registry::{oci_url, pull, push, OCI_URL_SCHEME};
pub use verify::MAX_UNCOMPRESSED_LAYER_BYTES;
