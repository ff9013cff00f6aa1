//! `hsm_client`: a typed client for hsmd.
//!
//! One [`Client`] holds a TLS channel per endpoint (mutual TLS, client certificate from a
//! [`Profile`]; one hsmd, or the replicas of a cluster listed as `endpoints`) and hands
//! out the generated gRPC clients over the one in use, plus typed convenience methods
//! for the common calls. Every failure is a [`ClientError`]; server errors keep
//! hsmd's stable reason (google.rpc.ErrorInfo) so programs can match on it. The typed
//! methods retry RESOURCE_EXHAUSTED and UNAVAILABLE with exponential backoff and full
//! jitter ([`RetryPolicy`], from the profile's `[retry]` table), honouring the server's
//! retry delay; [`Client::create_key`] fills in an idempotency token, so its retries
//! never make a second key. With several endpoints, a retry after a connection failure
//! or UNAVAILABLE goes to the next one ([`retry::route`] is the rule, [`Idempotency`]
//! which calls may move). [`import`] wraps key material for bring your own key.
//! Container image signing has typed calls too: signature policies per registry
//! namespace ([`Client::create_signature_policy`] and the like), and signing and
//! verifying images ([`Client::sign_image`], [`Client::verify_image`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hsm_client::ClientError> {
//! use hsm_client::{Client, Profile};
//! use hsm_client::v1::{MessageType, SigningAlgorithm};
//!
//! let profile = Profile::load(Profile::default_path()?)?;
//! let client = Client::connect(&profile).await?;
//! let sig = client
//!     .sign("alias/payments", SigningAlgorithm::EcdsaSha256, MessageType::Raw, b"hello".to_vec())
//!     .await?;
//! # let _ = sig; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bench;
mod calls;
mod client;
mod encryption;
pub mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod image_calls;
pub mod import;
mod import_calls;
pub mod names;
mod profile;
#[cfg(test)]
mod proptests;
pub mod retry;

pub use client::{Client, RetryObserver};
pub use encryption::{DataKey, Decrypted};
pub use error::{ClientError, code_name};
/// hsmd's stable error reasons, as [`ClientError::reason`] returns them.
pub use hsmd_proto::Reason;
pub use profile::{Profile, ProfileError};
pub use retry::{Idempotency, RetryNotice, RetryPolicy};

/// The generated API types and gRPC clients (`hsmd.v1`), re-exported for convenience.
pub use hsmd_proto::v1;
