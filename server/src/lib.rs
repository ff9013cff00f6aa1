//! hsmd: a key-management and signing daemon in front of a PKCS#11 token.
//!
//! The layers point one way (checked by `tests/tests/layers.rs`; the README's
//! Architecture section draws them): `api` (gRPC services) → `csr` → `keys` (the rules)
//! → the backends `hsm` (the only module that names cryptoki), `store` (SQLite), `audit`
//! (the hash-chained log) and `auth` (identity, policy, limits) → the leaves `encoding`
//! (SPKI, ECDSA DER, OAEP), `domain` (specs, states, the key record), `clock` and
//! `metrics` (the Prometheus registry every layer records into).
//! `config`, `dev` and `server` assemble them.
//!
//! # Library surface
//!
//! Almost everything is private to the crate. What other crates of the workspace use is
//! public on purpose:
//!
//! - [`server::run`], [`server::run_with_clock`] and [`server::run_until`]: start the
//!   daemon (the `hsmd` binary; the tests' in-process harness, with a
//!   [`clock::ManualClock`] and its own stop signal);
//! - [`config::Config`]: load and validate a config file (its `hsm` and `sweep_interval`
//!   are public: hsmd-bench opens the same token, the harness sweeps often);
//! - [`dev`]: the provisioning of `hsmd dev` (the binary, `hsmd-bench`, the tests);
//! - [`clock`] and [`domain`]: time, and the vocabulary of keys;
//! - [`baseline`]: the PKCS#11 pieces `hsmd-bench`'s raw side shares with hsmd, so that
//!   raw and hsmd do exactly the same token work;
//! - [`audit_writer`]: hsmd's audit writer without the daemon, for `hsmd-bench audit`;
//! - `fuzz` (hidden): the parsers of untrusted input as fuzz targets, for `fuzz/`.

mod api;
mod audit;
mod auth;
pub mod clock;
pub mod config;
mod csr;
pub mod dev;
pub mod domain;
mod encoding;
#[doc(hidden)]
pub mod fuzz;
mod hsm;
mod keys;
mod metrics;
#[cfg(test)]
mod proptests;
pub mod server;
mod signing;
mod store;

/// What `hsmd-bench` needs to run, with cryptoki directly, the same token work hsmd runs
/// for a call: the slot search, the key templates, and the mechanisms of each operation.
pub mod baseline {
    pub use crate::encoding::OaepHash;
    pub use crate::hsm::crypt::{aes_gcm, oaep};
    pub use crate::hsm::find_slot;
    pub use crate::hsm::mechanisms::ecdsa_hashes;
    pub use crate::hsm::objects::{KeyObjects, generate, generation};
    pub use crate::keys::manager::mechanism as sign_mechanism;
}

/// hsmd's audit writer (group commit, checkpoints, rotation) without the daemon, so that
/// `hsmd-bench audit` writes a log exactly as hsmd does (checkpoints signed in software).
pub mod audit_writer {
    pub use crate::audit::standalone::{AuditEvent, Outcome, StandaloneLog};
}
