//! The cluster argument of a proxy-wasm gRPC call-out, as Envoy wants it.

use crate::proto::put_len;

/// Longest cluster a gRPC call-out may name: its serialized `GrpcService` (see
/// [`grpc_service`]) then has one-byte lengths, so it stays ASCII.
pub const MAX_CLUSTER_LEN: usize = 120;

/// The `service` argument of the proxy's gRPC call for `cluster`: a serialized
/// `envoy.config.core.v3.GrpcService{envoy_grpc: {cluster_name}}`. Envoy first tries to
/// parse the argument as that message and only takes it as a bare cluster name when
/// parsing fails, so a bare name that happens to parse (`meshwarden_xds` does) would reach
/// Envoy as a service with neither kind set, which Envoy 1.40 does not survive. A cluster
/// of at most [`MAX_CLUSTER_LEN`] printable ASCII characters gives ASCII.
pub fn grpc_service(cluster: &str) -> String {
    let mut envoy_grpc = Vec::new();
    put_len(&mut envoy_grpc, 1, cluster.as_bytes());
    let mut service = Vec::new();
    put_len(&mut service, 1, &envoy_grpc);
    String::from_utf8_lossy(&service).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct GrpcService {
        #[prost(message, optional, tag = "1")]
        envoy_grpc: Option<EnvoyGrpc>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        cluster_name: String,
    }

    #[test]
    fn the_cluster_goes_as_a_grpc_service() {
        let istio = "outbound|18000||meshwarden.meshwarden-system.svc.cluster.local";
        let long = "c".repeat(MAX_CLUSTER_LEN);
        for cluster in ["meshwarden_xds", "meshwarden_ratelimit", istio, &long] {
            let s = grpc_service(cluster);
            assert!(s.is_ascii());
            let decoded = GrpcService::decode(s.as_bytes()).unwrap();
            assert_eq!(decoded.envoy_grpc.unwrap().cluster_name, cluster);
        }
    }
}
