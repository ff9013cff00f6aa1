//! The vocabulary every layer shares: key specs, usages, origins, states and algorithms
//! (`spec`), the key record and its lifecycle rules (`record`), the stable error reasons
//! (`reason`, re-exported from `hsmd-proto`). Pure data and rules: this
//! module names no other module of hsmd, so the backends (`hsm`, `store`, `audit`) and
//! the capabilities above them (`keys`, `csr`, `api`) all build on it.

pub mod node;
pub mod reason;
pub mod record;
pub mod spec;

/// The principal of hsmd's own actions (the deletion and expiry sweeps, audit
/// checkpoints, start-up records).
pub const SYSTEM_PRINCIPAL: &str = "hsmd";
