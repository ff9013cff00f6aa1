//! The figures of a review report, gathered in one pass over the records: the
//! [`Stats`] of `audit stats` (totals and top principals come from it), calls per hour,
//! calls per key, every denied, throttled and failed call, and key lifecycle events.

use std::collections::{BTreeMap, BTreeSet};

use hsm_client::v1::{AuditOutcome, AuditRecord};
use serde_json::json;

use crate::cli::args::format_timestamp;
use crate::cli::tally::{Counts, OUTCOME_NAMES, Stats, counts_json, outcome_index, short_method};

/// Outcomes listed call by call, as (index in `OUTCOMES`, outcome).
pub const REFUSED: [(usize, AuditOutcome); 3] = [
    (1, AuditOutcome::Denied),
    (3, AuditOutcome::Failed),
    (4, AuditOutcome::Throttled),
];

/// Methods that change a key's life, and the event each is shown as (when it succeeded).
pub const LIFECYCLE: [(&str, &str); 8] = [
    ("CreateKey", "created"),
    ("EnableKey", "enabled"),
    ("DisableKey", "disabled"),
    ("ScheduleKeyDeletion", "deletion scheduled"),
    ("CancelKeyDeletion", "deletion cancelled"),
    ("ImportKeyMaterial", "material imported"),
    ("DeleteImportedKeyMaterial", "material deleted"),
    ("RotateKey", "rotated"),
];

/// One call as listed in the report.
#[derive(Debug, Clone)]
pub struct Call {
    pub sequence: u64,
    /// RFC 3339, UTC (empty if the record has none).
    pub time: String,
    pub principal: String,
    pub method: String,
    pub key_id: String,
    pub alias: String,
    pub status: String,
}

impl Call {
    fn of(r: &AuditRecord) -> Call {
        Call {
            sequence: r.sequence,
            time: format_timestamp(r.time.as_ref()).unwrap_or_default(),
            principal: r.principal.clone(),
            method: short_method(&r.method),
            key_id: r.key_id.clone(),
            alias: r.alias.clone(),
            status: r.status.clone(),
        }
    }

    /// The alias the caller named, else the key id.
    pub fn key(&self) -> &str {
        if self.alias.is_empty() {
            &self.key_id
        } else {
            &self.alias
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "sequence": self.sequence, "time": self.time, "principal": self.principal,
            "method": self.method, "key_id": self.key_id, "alias": self.alias,
            "status": self.status,
        })
    }
}

/// Calls of one key (by id when the call resolved one, else by the alias named).
#[derive(Debug, Default)]
pub struct KeyTally {
    pub aliases: BTreeSet<String>,
    pub counts: Counts,
}

/// Refused or failed calls of one principal with one outcome and reason.
#[derive(Debug)]
pub struct Refusal {
    pub principal: String,
    pub outcome: &'static str,
    pub reason: String,
    pub calls: Vec<Call>,
}

/// Everything the report shows about the records of its range.
#[derive(Debug, Default)]
pub struct Figures {
    pub stats: Stats,
    pub records: u64,
    /// Hour (Unix seconds / 3600) -> counts.
    pub hours: BTreeMap<i64, Counts>,
    pub keys: BTreeMap<String, KeyTally>,
    refusals: BTreeMap<(String, usize, String), Vec<Call>>,
    /// (event, call), oldest first.
    pub lifecycle: Vec<(&'static str, Call)>,
}

impl Figures {
    /// Counts one record everywhere it belongs.
    pub fn add(&mut self, r: &AuditRecord) {
        self.stats.add(r);
        self.records += 1;
        let Some(i) = outcome_index(r.outcome) else {
            return;
        };
        if let Some(t) = &r.time {
            self.hours.entry(t.seconds.div_euclid(3600)).or_default()[i] += 1;
        }
        let key = if r.key_id.is_empty() {
            &r.alias
        } else {
            &r.key_id
        };
        if !key.is_empty() {
            let k = self.keys.entry(key.clone()).or_default();
            k.counts[i] += 1;
            if !r.alias.is_empty() {
                k.aliases.insert(r.alias.clone());
            }
        }
        if REFUSED.iter().any(|(j, _)| *j == i) {
            let group = (r.principal.clone(), i, r.reason.clone());
            self.refusals.entry(group).or_default().push(Call::of(r));
        }
        let method = short_method(&r.method);
        if i == 0
            && let Some((_, event)) = LIFECYCLE.iter().find(|(m, _)| *m == method)
        {
            self.lifecycle.push((event, Call::of(r)));
        }
    }

    /// Totals per outcome, from [`Stats`].
    pub fn totals(&self) -> Counts {
        self.stats.totals()
    }

    /// The `n` principals with the most calls (ties by name), from [`Stats`].
    pub fn top_principals(&self, n: usize) -> Vec<(String, Counts)> {
        let mut all: Vec<(String, Counts)> = self
            .stats
            .by_principal()
            .into_iter()
            .map(|(p, c)| (p.to_string(), c))
            .collect();
        all.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
        all.truncate(n);
        all
    }

    /// The `n` keys with the most calls (ties by key).
    pub fn top_keys(&self, n: usize) -> Vec<(&str, &KeyTally)> {
        let mut all: Vec<(&str, &KeyTally)> =
            self.keys.iter().map(|(k, t)| (k.as_str(), t)).collect();
        all.sort_by_key(|(_, t)| std::cmp::Reverse(t.counts.iter().sum::<u64>()));
        all.truncate(n);
        all
    }

    /// Denied, failed and throttled calls grouped by principal, outcome and reason,
    /// largest group first.
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out: Vec<Refusal> = self
            .refusals
            .iter()
            .map(|((p, i, reason), calls)| Refusal {
                principal: p.clone(),
                outcome: OUTCOME_NAMES[*i],
                reason: reason.clone(),
                calls: calls.clone(),
            })
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.calls.len()));
        out
    }

    /// Principals that made at least one call.
    pub fn principals(&self) -> usize {
        self.stats.by_principal().len()
    }

    /// The figures as JSON (the `-o json` report, without range and checkpoint).
    pub fn json(&self, top: usize) -> serde_json::Value {
        let hours: Vec<_> = (self.hours.iter())
            .map(|(h, c)| with(counts_json(c), "hour", json!(hour_label(*h))))
            .collect();
        let principals: Vec<_> = (self.top_principals(top).iter())
            .map(|(p, c)| with(counts_json(c), "principal", json!(p)))
            .collect();
        let keys: Vec<_> = (self.top_keys(top).iter())
            .map(|(k, t)| {
                let v = with(counts_json(&t.counts), "key", json!(k));
                with(v, "aliases", json!(t.aliases))
            })
            .collect();
        let refusals: Vec<_> = (self.refusals().iter())
            .map(|r| {
                json!({
                    "principal": r.principal, "outcome": r.outcome, "reason": r.reason,
                    "count": r.calls.len(),
                    "calls": r.calls.iter().map(Call::json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let lifecycle: Vec<_> = (self.lifecycle.iter())
            .map(|(event, call)| with(call.json(), "event", json!(event)))
            .collect();
        json!({
            "records": self.records,
            "totals": counts_json(&self.totals()),
            "principals": self.principals(),
            "keys": self.keys.len(),
            "stats": self.stats.json(),
            "calls_per_hour": hours,
            "top_principals": principals,
            "top_keys": keys,
            "refusals": refusals,
            "lifecycle": lifecycle,
        })
    }
}

/// `object` with `field` set to `value`.
fn with(mut object: serde_json::Value, field: &str, value: serde_json::Value) -> serde_json::Value {
    object[field] = value;
    object
}

/// Hour number (Unix seconds / 3600) as `2025-01-31T12:00:00Z`.
pub fn hour_label(hour: i64) -> String {
    let ts = prost_types::Timestamp {
        seconds: hour.saturating_mul(3600),
        nanos: 0,
    };
    format_timestamp(Some(&ts)).unwrap_or_default()
}

/// Adds up counts.
pub fn sum(counts: &Counts) -> u64 {
    counts.iter().sum()
}

/// Calls in the busiest hour.
pub fn busiest_hour(hours: &BTreeMap<i64, Counts>) -> u64 {
    hours.values().map(sum).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, secs: i64, p: &str, m: &str, o: AuditOutcome, reason: &str) -> AuditRecord {
        AuditRecord {
            sequence: seq,
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            principal: p.into(),
            method: format!("/hsmd.v1.KeyService/{m}"),
            outcome: o as i32,
            reason: reason.into(),
            key_id: "k1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_pass_fills_every_section() {
        let mut f = Figures::default();
        let h = 1_700_000_000 / 3600 * 3600;
        f.add(&rec(1, h, "admin", "CreateKey", AuditOutcome::Ok, ""));
        f.add(&rec(2, h + 10, "app", "Sign", AuditOutcome::Ok, ""));
        f.add(&rec(
            3,
            h + 3600,
            "app",
            "Sign",
            AuditOutcome::Throttled,
            "RATE_LIMITED",
        ));
        f.add(&rec(
            4,
            h + 3601,
            "app",
            "Sign",
            AuditOutcome::Throttled,
            "RATE_LIMITED",
        ));
        f.add(&rec(
            5,
            h + 3602,
            "evil",
            "DisableKey",
            AuditOutcome::Denied,
            "ACCESS_DENIED",
        ));
        f.add(&rec(
            6,
            h + 3603,
            "admin",
            "DisableKey",
            AuditOutcome::Invalid,
            "X",
        ));

        assert_eq!(f.records, 6);
        assert_eq!(f.totals(), [2, 1, 1, 0, 2]);
        assert_eq!(f.hours.len(), 2);
        assert_eq!(busiest_hour(&f.hours), 4);
        assert_eq!(
            f.top_principals(1),
            vec![("app".to_string(), [1, 0, 0, 0, 2])]
        );
        assert_eq!(f.top_keys(5)[0].1.counts, [2, 1, 1, 0, 2]);
        let refusals = f.refusals();
        assert_eq!(refusals.len(), 2, "invalid calls are not listed");
        assert_eq!(refusals[0].principal, "app");
        assert_eq!(refusals[0].outcome, "throttled");
        assert_eq!(refusals[0].calls.len(), 2);
        assert_eq!(f.lifecycle.len(), 1, "only succeeded lifecycle calls");
        assert_eq!(f.lifecycle[0].0, "created");

        let json = f.json(10);
        assert_eq!(json["totals"]["throttled"], 2);
        assert_eq!(json["totals"]["total"], 6);
        assert_eq!(json["stats"], f.stats.json());
        assert_eq!(json["calls_per_hour"][1]["throttled"], 2);
        assert_eq!(json["refusals"][0]["count"], 2);
    }

    #[test]
    fn hour_labels() {
        assert_eq!(hour_label(1_700_000_000 / 3600), "2023-11-14T22:00:00Z");
    }
}
