//! Helpers for the end-to-end tests: the real `hsmd` binary on a real SoftHSM2 token, or
//! on the TPM token with `E2E_TOKEN=tpm` (the token matrix, see [`token`]).
//!
//! Every test starts its own daemon ([`Daemon::start`]) with `hsmd dev` on a fresh data
//! folder and port 0, so tests run in parallel and never share a token. Results are
//! cross-checked with tools that do not share code with hsmd: the `openssl` and
//! `pkcs11-tool` command-line programs, and the audit log file read directly.
//!
//! Tests about dates run the server library in the test process instead, on a clock
//! they move ([`InProcess`]; one such test per test binary). Both harnesses give the
//! same client helpers, those of [`Instance`].
//!
//! The binaries `hsmd` and `hsmctl` (and the fault module `libfaultp11.so`) must be built
//! first (`cargo build --workspace --bins --lib`);
//! they are looked up next to the test executable.

pub mod algorithms;
pub mod audit;
pub mod certs;
pub mod cluster;
pub mod configured;
pub mod crypt;
pub mod daemon;
pub mod import;
pub mod inprocess;
pub mod instance;
pub mod keys;
pub mod kms;
pub mod load;
pub mod ops;
pub mod pkcs11;
pub mod postgres;
pub mod profile;
pub mod registry;
pub mod serve;
pub mod status;
pub mod token;
pub mod tools;
pub mod tpm;

pub use daemon::Daemon;
pub use hsmd_proto::v1;
pub use inprocess::InProcess;
pub use instance::{ADMIN_PRINCIPAL, Instance};
pub use status::{expect_error, expect_ok, reason_of, request_id};
pub use token::{Need, TokenKind};
pub use tools::{CmdOutput, require_tools, run, run_unchecked};
