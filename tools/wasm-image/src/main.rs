//! `meshwarden-image`: Wasm modules as OCI images for Istio's `WasmPlugin`.
//!
//! ```text
//! meshwarden-image push  --module FILE --image HOST:PORT/REPO:TAG [--insecure]
//! meshwarden-image pull  --image REF [--digest sha256:…] [--insecure] -o FILE
//! meshwarden-image build --module FILE -o DIR [--tag TAG]
//! ```

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meshwarden_wasm_image as wasm_image;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Build, push and pull Wasm modules as OCI images that Istio's WasmPlugin can load
/// (the "compat" image variant).
#[derive(Debug, Parser)]
#[command(name = "meshwarden-image", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the image of a module and push it; prints the pinned oci:// URL and the
    /// manifest digest (WasmPlugin `url` and `sha256`).
    Push {
        /// The Wasm module.
        #[arg(long, value_name = "FILE")]
        module: PathBuf,
        /// Where to push: HOST:PORT/REPO:TAG.
        #[arg(long, value_name = "REF")]
        image: String,
        /// Talk plain HTTP to the registry (a local registry without TLS).
        #[arg(long)]
        insecure: bool,
    },
    /// Pull a module, verifying the manifest digest (if given or pinned with @sha256:)
    /// and every blob's digest.
    Pull {
        /// The image: HOST:PORT/REPO:TAG or HOST:PORT/REPO@sha256:HEX, oci:// prefix allowed.
        #[arg(long, value_name = "REF")]
        image: String,
        /// Expected manifest digest: sha256:HEX, or the bare HEX of a WasmPlugin sha256.
        #[arg(long, value_name = "DIGEST")]
        digest: Option<String>,
        /// Talk plain HTTP to the registry (a local registry without TLS).
        #[arg(long)]
        insecure: bool,
        /// Where to write the module.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Build the image of a module into an OCI image layout directory (for
    /// `skopeo copy oci:DIR:TAG docker://…` and the like); prints the manifest digest.
    Build {
        /// The Wasm module.
        #[arg(long, value_name = "FILE")]
        module: PathBuf,
        /// The image layout directory (created if missing; index.json is replaced).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// The tag recorded for the image in index.json.
        #[arg(long, default_value = "latest")]
        tag: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Push {
            module,
            image,
            insecure,
        } => {
            let built = wasm_image::build_image(&read_module(&module)?)
                .with_context(|| module.display().to_string())?;
            let digest = wasm_image::push(&image, &built, insecure).await?;
            println!("pushed {image}");
            println!("url: {}", wasm_image::oci_url(&image, &digest)?);
            println!("digest: {digest}");
            println!("sha256: {}", digest.hex());
        }
        Command::Pull {
            image,
            digest,
            insecure,
            output,
        } => {
            let module = wasm_image::pull(&image, digest.as_deref(), insecure).await?;
            write_atomically(&output, &module)?;
            println!("wrote {} ({} bytes)", output.display(), module.len());
        }
        Command::Build {
            module,
            output,
            tag,
        } => {
            let built = wasm_image::build_image(&read_module(&module)?)
                .with_context(|| module.display().to_string())?;
            wasm_image::write_oci_layout(&built, &output, &tag)?;
            println!("wrote {}:{tag}", output.display());
            println!("digest: {}", built.digest());
            println!("sha256: {}", built.digest().hex());
        }
    }
    Ok(())
}

/// Reads a module file, refusing one over the size limit before reading it all.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut data = Vec::new();
    file.take(wasm_image::MAX_MODULE_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("read {}", path.display()))?;
    // build_image refuses data over the limit; reading one byte more is enough to tell.
    Ok(data)
}

/// Writes `data` to a temporary file next to `path`, then renames it into place, so a
/// failure never leaves a partial module behind.
fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}
