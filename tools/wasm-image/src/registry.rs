//! Pushing and pulling Wasm images with a registry (OCI distribution API, via
//! `oci-client`). Access is anonymous; `insecure_http` speaks plain HTTP to the registry
//! (a loopback or in-cluster registry without TLS).

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{check_size, media_type, Descriptor, Image};
use crate::verify::{fetch_module, Source};
use futures_util::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::time::Duration;

/// The scheme prefix Istio's `WasmPlugin.url` uses for images; accepted on references.
pub const OCI_URL_SCHEME: &str = "oci://";

/// Pushes `image` as `reference` (`HOST[:PORT]/REPO:TAG`, or `…@sha256:…` equal to the
/// image's digest): the layer and config blobs the registry does not have yet, then the
/// manifest bytes exactly as built. Returns the manifest digest.
pub async fn push(reference: &str, image: &Image, insecure_http: bool) -> Result<Digest> {
    let registry = Registry::connect(reference, insecure_http).await?;
    if let Some(pinned) = registry.reference_digest()? {
        if pinned != *image.digest() {
            return Err(Error::DigestMismatch {
                what: format!("manifest (pushing to {reference})"),
                expected: pinned,
                actual: image.digest().clone(),
            });
        }
    }
    for blob in [&image.layer, &image.config] {
        let present = registry
            .client
            .blob_exists(&registry.reference, blob.digest.as_str())
            .await
            .map_err(|e| registry.error("check blob", e))?;
        if !present {
            registry
                .client
                .push_blob(&registry.reference, blob.data.clone(), blob.digest.as_str())
                .await
                .map_err(|e| registry.error("push blob", e))?;
        }
    }
    registry
        .client
        .push_manifest_raw(
            &registry.reference,
            image.manifest.data.clone(),
            http::HeaderValue::from_static(media_type::OCI_MANIFEST),
        )
        .await
        .map_err(|e| registry.error("push manifest", e))?;
    Ok(image.digest().clone())
}

/// Pulls the Wasm module of the image `reference` (`[oci://]HOST[:PORT]/REPO:TAG` or
/// `…@sha256:…`). The manifest digest is checked against `expected_manifest_digest`
/// (`sha256:<hex>` or bare hex) and against the reference's own `@sha256:` when present;
/// every blob fetched is checked against its descriptor. Accepts the compat, Docker and
/// oci Wasm image variants; returns the module, checked for the Wasm magic.
pub async fn pull(
    reference: &str,
    expected_manifest_digest: Option<&str>,
    insecure_http: bool,
) -> Result<Vec<u8>> {
    let expected = expected_manifest_digest.map(Digest::parse).transpose()?;
    let registry = Registry::connect(reference, insecure_http).await?;
    let expected = match (expected, registry.reference_digest()?) {
        (Some(given), Some(pinned)) if given != pinned => {
            return Err(Error::InvalidReference {
                reference: reference.to_string(),
                reason: format!("it pins {pinned}, but the expected digest is {given}"),
            });
        }
        (given, pinned) => given.or(pinned),
    };
    let (_variant, module) = fetch_module(&registry, expected.as_ref()).await?;
    Ok(module)
}

/// A client bound to one image reference.
struct Registry {
    client: Client,
    reference: Reference,
    /// The reference as given, for errors.
    text: String,
}

impl Registry {
    async fn connect(reference: &str, insecure_http: bool) -> Result<Self> {
        let parsed = parse_reference(reference)?;
        let protocol = if insecure_http {
            ClientProtocol::HttpsExcept(vec![parsed.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::try_from(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .map_err(|e| Error::InvalidReference {
            reference: reference.to_string(),
            reason: format!("cannot create a registry client: {e}"),
        })?;
        client
            .store_auth_if_needed(parsed.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
        Ok(Self {
            client,
            reference: parsed,
            text: reference.to_string(),
        })
    }

    /// The `@sha256:` digest of the reference, if it has one.
    fn reference_digest(&self) -> Result<Option<Digest>> {
        self.reference.digest().map(Digest::parse).transpose()
    }

    /// A registry error.
    fn error(&self, operation: &'static str, error: OciDistributionError) -> Error {
        Error::Registry {
            operation,
            reference: self.text.clone(),
            error: Box::new(error),
        }
    }
}

/// `oci-client`'s own digest check failure as [`Error::DigestMismatch`].
fn digest_mismatch(what: &str, error: &DigestError) -> Option<Error> {
    match error {
        DigestError::VerificationError { expected, actual } => Some(Error::DigestMismatch {
            what: what.to_string(),
            expected: Digest::parse(expected).ok()?,
            actual: Digest::parse(actual).ok()?,
        }),
        _ => None,
    }
}

impl Source for Registry {
    async fn manifest(&self) -> Result<Vec<u8>> {
        let (body, _digest) = self
            .client
            .pull_manifest_raw(
                &self.reference,
                &RegistryAuth::Anonymous,
                &[media_type::OCI_MANIFEST, media_type::DOCKER_MANIFEST],
            )
            .await
            .map_err(|e| {
                match &e {
                    // The client checks the body against the reference's @sha256: itself.
                    OciDistributionError::DigestError(d) => digest_mismatch("manifest", d),
                    _ => None,
                }
                .unwrap_or_else(|| self.error("pull manifest", e))
            })?;
        Ok(body.to_vec())
    }

    async fn blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
        let what = format!("blob {}", desc.digest);
        let oci_desc = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, &oci_desc)
            .await
            .map_err(|e| self.error("pull blob", e))?;
        if let Some(len) = stream.content_length {
            check_size(&what, len, max)?;
        }
        let capacity = stream.content_length.unwrap_or(0).min(max);
        let mut data = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = stream.try_next().await.map_err(|e| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<DigestError>())
                .and_then(|d| digest_mismatch(&what, d))
                .unwrap_or_else(|| Error::io(format!("download {what}"))(e))
        })? {
            check_size(&what, (data.len() + chunk.len()) as u64, max)?;
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }
}

/// The `oci://HOST[:PORT]/REPO@sha256:…` URL of the image `reference` pinned to `digest`,
/// for `WasmPlugin.url`.
pub fn oci_url(reference: &str, digest: &Digest) -> Result<String> {
    let parsed = parse_reference(reference)?;
    Ok(format!(
        "{OCI_URL_SCHEME}{}/{}@{digest}",
        parsed.registry(),
        parsed.repository()
    ))
}

/// Parses `[oci://]HOST[:PORT]/REPO[:TAG][@sha256:…]`.
fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .strip_prefix(OCI_URL_SCHEME)
        .unwrap_or(reference)
        .parse()
        .map_err(|e: oci_client::ParseError| Error::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}
