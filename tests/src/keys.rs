//! Making a key, reading it back, and the time to compare its dates with: helpers that
//! test files used to carry a copy each of.

use std::time::{SystemTime, UNIX_EPOCH};

use hsmd_proto::v1::{
    CreateKeyRequest, DescribeKeyRequest, KeyMetadata, KeyState,
    key_service_client::KeyServiceClient,
};
use tonic::transport::Channel;

use crate::{Instance, expect_ok};

/// CreateKey, which must succeed; returns the new key's id. `what` names the key in the
/// panic message.
pub async fn create(
    keys: &mut KeyServiceClient<Channel>,
    req: CreateKeyRequest,
    what: &str,
) -> String {
    keys.create_key(req)
        .await
        .unwrap_or_else(|s| panic!("CreateKey {what}: {}", crate::status::describe(&s)))
        .into_inner()
        .key
        .expect("CreateKeyResponse.key is set")
        .key_id
}

/// DescribeKey as the dev admin; panics unless it succeeds.
pub async fn describe_key(d: &Instance, key_id: &str) -> KeyMetadata {
    let req = DescribeKeyRequest {
        key_id: key_id.to_owned(),
    };
    let (resp, _) = expect_ok(d.keys().describe_key(req).await, "DescribeKey");
    resp.key.expect("DescribeKeyResponse.key")
}

/// The state of a key's metadata (`Unspecified` for a value this client does not know).
pub fn state_of(meta: &KeyMetadata) -> KeyState {
    KeyState::try_from(meta.state).unwrap_or(KeyState::Unspecified)
}

/// The system time in unix seconds (a spawned daemon's clock).
pub fn unix_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("unix seconds fit i64")
}
