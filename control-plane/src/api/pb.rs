//! Generated protobuf types, clients and servers of the policy API
//! (`proto/meshwarden/v1alpha1/policy.proto`).

#![allow(missing_docs, clippy::doc_lazy_continuation)]

tonic::include_proto!("meshwarden.v1alpha1");

/// The encoded file descriptors of the policy API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meshwarden_descriptor");
