//! The stable error reasons, for the layers below `api`.
//!
//! `Reason` is defined once, in `hsmd-proto`, because the client matches on the same
//! enum. The proto crate is otherwise confined to `api` and `server` (tests/tests/layers.rs):
//! this file is the one exception, a re-export of that plain enum (no generated message,
//! no tonic type), so that `keys` and `csr` can name each error's reason by type without
//! knowing the gRPC API. Nothing else of `hsmd_proto` may be named here.

pub use hsmd_proto::Reason;
