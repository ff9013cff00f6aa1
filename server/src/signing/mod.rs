//! Image signing for container registries (issue 15), first the parts that need
//! neither the token nor a registry: cosign's signature format (`cosign`), the rules
//! of a signature policy (`rules`: names, doublestar scopes, cron schedules) and the
//! registry's push notifications (`events`). The policy service, the registry client
//! and the push webhook build on these.
//!
//! Not wired into the daemon yet: nothing outside the tests calls it.
#![allow(dead_code)]

pub(crate) mod cosign;
pub(crate) mod events;
pub(crate) mod rules;

/// Caller or registry text echoed into an error, capped as every error of hsmd caps it.
fn shown(s: &str) -> String {
    crate::keys::truncate(s, 80)
}
