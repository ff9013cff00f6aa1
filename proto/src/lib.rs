//! Generated types and service stubs for the hsmd gRPC API (`hsmd.v1`).
//!
//! The `.proto` files under `proto/hsmd/v1/` are the API reference; this crate only
//! compiles them so that the server, the client and the benchmark share one definition.

#![allow(clippy::all, missing_docs)]

/// `hsmd.v1`: KeyService, AuditService, TokenService, CertificateService and their messages.
pub mod v1 {
    tonic::include_proto!("hsmd.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hsmd_descriptor");
