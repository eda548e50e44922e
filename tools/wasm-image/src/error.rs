//! What can go wrong building, pushing or pulling a Wasm image.

use crate::digest::Digest;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error building, pushing or pulling a Wasm image. Each names what did not match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with the WebAssembly magic `\0asm`.
    #[error(
        "not a WebAssembly module: starts with {found} instead of the magic 00 61 73 6d (\\0asm)"
    )]
    NotWasm {
        /// The first bytes found, in hex.
        found: String,
    },
    /// Something is over its size limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size (or the size read so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A digest that is not `sha256:<64 hex digits>`.
    #[error("invalid digest {value:?}: expected sha256:<64 hex digits>")]
    InvalidDigest {
        /// The text given.
        value: String,
    },
    /// An image reference that cannot be parsed or used.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// Content whose digest is not the expected one.
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (`manifest`, `layer sha256:…`, `config sha256:…`).
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// A blob whose length is not the one its descriptor declares.
    #[error("{what} size mismatch: the manifest says {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was checked.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A manifest that cannot be parsed or is not a single-platform image manifest.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// An image that is none of the Wasm image variants Istio can load.
    #[error("not a Wasm image Istio can load: {0}")]
    UnsupportedImage(String),
    /// A layer that should hold the module but does not, or cannot be read.
    #[error("layer {digest}: {reason}")]
    InvalidLayer {
        /// The layer's digest.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused a request or could not be reached.
    #[error("registry: {operation} {reference}: {}", chain(.error.as_ref()))]
    Registry {
        /// What was being done (`push blob`, `pull manifest`, …).
        operation: &'static str,
        /// The image reference.
        reference: String,
        /// The client's error.
        error: Box<oci_client::errors::OciDistributionError>,
    },
    /// A local file or stream could not be read or written.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// `error` and its sources, `: `-separated (a transport error's cause is in its sources).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// An [`Error::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |error| Self::Io { context, error }
    }
}
