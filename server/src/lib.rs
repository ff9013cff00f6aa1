//! hsmd: a key-management and signing daemon in front of a PKCS#11 token.
//!
//! Layers point one way: `api` (gRPC, statuses) → `keys` (rules) → `hsm` (cryptoki) and
//! `store` (SQLite); `csr` builds certificate requests and certificates signed by the
//! token (`api` → `csr` → `keys`); `audit` records every call; `auth` names the caller. See the
//! README's architecture section for the shape and the data flow of one call.

pub mod api;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod csr;
pub mod dev;
pub mod domain;
pub mod encoding;
pub mod hsm;
pub mod keys;
pub mod server;
pub mod store;
