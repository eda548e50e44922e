//! Generated protobuf types, clients and servers of the policy API
//! (`proto/meshwarden/v1alpha1/policy.proto`).

#![allow(missing_docs, clippy::doc_lazy_continuation)]

tonic::include_proto!("meshwarden.v1alpha1");
