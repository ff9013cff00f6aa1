//! A client of hsmd's Kubernetes KMS v2 plugin, as the API server is one: generated from
//! the same vendored upstream `api.proto`, speaking gRPC over the Unix socket.

use std::path::{Path, PathBuf};

use hsmd_proto::kms_v2::key_management_service_client::KeyManagementServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the plugin socket at `path`.
pub async fn kms_client(path: &Path) -> KeyManagementServiceClient<Channel> {
    let path: PathBuf = path.to_path_buf();
    let channel = Endpoint::try_from("http://kms.invalid")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to the KMS plugin socket");
    KeyManagementServiceClient::new(channel)
}
