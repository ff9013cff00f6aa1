//! Generated types and service stubs for the hsmd gRPC API (`hsmd.v1`).
//!
//! The `.proto` files under `proto/hsmd/v1/` are the API reference; this crate only
//! compiles them so that the server, the client and the benchmark share one definition.
//! It also holds [`Reason`], the stable error reasons both ends name by type.

pub mod reason;
pub use reason::Reason;

/// `hsmd.v1`: KeyService, AuditService, TokenService, CertificateService,
/// SigningPolicyService, ImageSigningService and their messages.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hsmd.v1");

    /// Messages that carry plaintexts or data keys wipe them when dropped: tonic drops a
    /// response right after encoding it, and a request right after the handler took it.
    /// (A field is taken out with `std::mem::take`: a type with `Drop` cannot be moved
    /// out of.) The encoded HTTP/2 frames are tonic's and are not wiped.
    macro_rules! wipe_on_drop {
        ($($ty:ident),+) => {$(
            impl Drop for $ty {
                fn drop(&mut self) {
                    zeroize::Zeroize::zeroize(&mut self.plaintext);
                }
            }
        )+};
    }

    wipe_on_drop!(EncryptRequest, DecryptResponse, GenerateDataKeyResponse);
}

/// Kubernetes' KMS v2 plugin API (`k8s.io/kms/apis/v2`, proto package `v2`), vendored
/// verbatim in `k8s/kms/apis/v2/api.proto`: the service hsmd serves on its KMS socket
/// and the API server calls.
#[allow(clippy::all, missing_docs)]
pub mod kms_v2 {
    tonic::include_proto!("v2");

    /// The data keys the API server sends and gets back are wiped when dropped.
    impl Drop for EncryptRequest {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.plaintext);
        }
    }

    impl Drop for DecryptResponse {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.plaintext);
        }
    }
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hsmd_descriptor");
