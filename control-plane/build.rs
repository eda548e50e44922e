//! Generates the policy API (`proto/meshwarden/v1alpha1`) with tonic-prost-build, using the
//! protoc shipped by `protoc-bin-vendored` so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC; this only affects the build script's own process.
    std::env::set_var("PROTOC", protoc);

    // Relative to the package directory (the build script's working directory), so the
    // rerun-if-changed paths stay right wherever the workspace is checked out.
    let root = "../proto";
    let policy = "../proto/meshwarden/v1alpha1/policy.proto";
    let audit = "../proto/meshwarden/v1alpha1/audit.proto";
    let capture = "../proto/meshwarden/v1alpha1/capture.proto";
    let breakers = "../proto/meshwarden/v1alpha1/breakers.proto";
    println!("cargo:rerun-if-changed={root}");
    // The descriptors also feed gRPC server reflection (`grpcurl` against the API).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("meshwarden_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .build_server(true)
        .build_client(true)
        // Undecodable requests (e.g. non-UTF-8 strings) are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::api::codec::Codec")
        .compile_protos(&[policy, audit, capture, breakers], &[root])?;
    Ok(())
}
