//! Prometheus metrics: one registry of every hsmd metric, the calls that move them, and
//! the text a scrape gets. A leaf: it names no other module of the crate, so every layer
//! (the token's session pool, the audit writer, the call bracket in `api`) can record
//! into the [`Metrics`] handed down to it; `http.rs` serves them.
//!
//! Labels carry only bounded, non-secret values: gRPC method names, outcomes, PKCS#11
//! function and mechanism names, rate-limit classes and key states. Never a key id, an
//! alias, a request id or message bytes; the principal only with `[metrics]
//! per_principal = true` (one series per client certificate).

pub(crate) mod http;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set: names fixed by the code, values bounded (see the module docs).
type Labels = Vec<(&'static str, String)>;

/// Latency buckets in seconds, 100 us to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of the daemon. Cheap to record into from any thread.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    per_principal: bool,
    calls: Family<Labels, Counter>,
    call_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    token_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    token_errors: Family<Labels, Counter>,
    /// Sessions in the token session pool.
    pub(crate) pool_size: Gauge,
    /// Sessions lent to a call right now.
    pub(crate) pool_in_use: Gauge,
    /// Calls waiting for a free session.
    pub(crate) pool_waiters: Gauge,
    /// Events handed to the audit writer and not yet taken by it.
    pub(crate) audit_queue: Gauge,
    audit_fsync_seconds: Histogram,
    audit_records: Counter,
    audit_write_failures: Counter,
    audit_last_checkpoint: Gauge<f64, AtomicU64>,
    /// Audit records sent to the syslog receiver.
    pub(crate) forward_sent: Counter,
    /// Audit records not forwarded (queue full or receiver gone; the file keeps them).
    pub(crate) forward_dropped: Counter,
    /// 1 while the syslog connection is up.
    pub(crate) forward_connected: Gauge,
    rate_limited: Family<Labels, Counter>,
    keys: Family<Labels, Gauge>,
    import_tokens_live: Gauge,
    image_sign_queue: Gauge,
}

impl Metrics {
    /// A registry with every metric at zero. `per_principal` adds a `principal` label
    /// to the call and rate-limit counters.
    pub(crate) fn new(per_principal: bool) -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            per_principal,
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency_histogram),
            token_seconds: Family::new_with_constructor(latency_histogram),
            token_errors: Family::default(),
            pool_size: Gauge::default(),
            pool_in_use: Gauge::default(),
            pool_waiters: Gauge::default(),
            audit_queue: Gauge::default(),
            audit_fsync_seconds: latency_histogram(),
            audit_records: Counter::default(),
            audit_write_failures: Counter::default(),
            audit_last_checkpoint: Gauge::default(),
            forward_sent: Counter::default(),
            forward_dropped: Counter::default(),
            forward_connected: Gauge::default(),
            rate_limited: Family::default(),
            keys: Family::default(),
            import_tokens_live: Gauge::default(),
            image_sign_queue: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "hsmd_calls",
            "gRPC calls answered, by method and outcome (ok, denied, invalid, failed, throttled)",
            self.calls.clone(),
        );
        r.register(
            "hsmd_call_duration_seconds",
            "Time from the start of a call to its answer (audit record durable), by method",
            self.call_seconds.clone(),
        );
        r.register(
            "hsmd_token_operation_duration_seconds",
            "Time of one PKCS#11 operation on a pooled session, by operation and mechanism",
            self.token_seconds.clone(),
        );
        r.register(
            "hsmd_token_errors",
            "PKCS#11 operations that failed, by operation and mechanism",
            self.token_errors.clone(),
        );
        r.register(
            "hsmd_token_sessions",
            "Logged-in sessions in the token session pool",
            self.pool_size.clone(),
        );
        r.register(
            "hsmd_token_sessions_in_use",
            "Token sessions lent to a call",
            self.pool_in_use.clone(),
        );
        r.register(
            "hsmd_token_session_waiters",
            "Calls waiting for a free token session",
            self.pool_waiters.clone(),
        );
        self.register_audit();
        let r = &mut self.registry;
        r.register(
            "hsmd_rate_limited",
            "Calls refused by a rate limit, by limit class",
            self.rate_limited.clone(),
        );
        r.register(
            "hsmd_keys",
            "Keys in the metadata store, by state (read at scrape time)",
            self.keys.clone(),
        );
        r.register(
            "hsmd_import_tokens_live",
            "Import tokens neither expired nor superseded (read at scrape time)",
            self.import_tokens_live.clone(),
        );
        r.register(
            "hsmd_image_sign_queue",
            "Registry pushes queued for image signing, not yet handled (read at scrape time)",
            self.image_sign_queue.clone(),
        );
    }

    fn register_audit(&mut self) {
        let r = &mut self.registry;
        r.register(
            "hsmd_audit_queue_depth",
            "Audit events waiting for the audit writer",
            self.audit_queue.clone(),
        );
        r.register(
            "hsmd_audit_fsync_duration_seconds",
            "Time of one audit group write and fdatasync",
            self.audit_fsync_seconds.clone(),
        );
        r.register(
            "hsmd_audit_records_written",
            "Audit records made durable (checkpoints included)",
            self.audit_records.clone(),
        );
        r.register(
            "hsmd_audit_write_failures",
            "Audit group writes that failed (their calls failed UNAVAILABLE)",
            self.audit_write_failures.clone(),
        );
        r.register(
            "hsmd_audit_last_checkpoint_timestamp_seconds",
            "Unix time of the last signed audit checkpoint (0: none since start)",
            self.audit_last_checkpoint.clone(),
        );
        r.register(
            "hsmd_audit_forwarded",
            "Audit records sent to the syslog receiver",
            self.forward_sent.clone(),
        );
        r.register(
            "hsmd_audit_forward_dropped",
            "Audit records not forwarded to syslog (queue full or receiver down); the log file keeps them",
            self.forward_dropped.clone(),
        );
        r.register(
            "hsmd_audit_forward_connected",
            "1 while the connection to the syslog receiver is up",
            self.forward_connected.clone(),
        );
    }

    /// One answered call: its method (the full gRPC path), outcome and duration.
    pub(crate) fn call(
        &self,
        method: &str,
        outcome: &str,
        principal: Option<&str>,
        took: Duration,
    ) {
        let mut labels = vec![
            ("method", method.to_string()),
            ("outcome", outcome.to_string()),
        ];
        if self.per_principal {
            labels.push(("principal", label_value(principal.unwrap_or(""))));
        }
        self.calls.get_or_create(&labels).inc();
        self.call_seconds
            .get_or_create(&vec![("method", method.to_string())])
            .observe(took.as_secs_f64());
    }

    /// One PKCS#11 operation (`C_Sign`...), its mechanism (`-` when not one), its time
    /// and whether it failed.
    pub(crate) fn token_op(&self, operation: &str, mechanism: &str, took: Duration, ok: bool) {
        let labels = vec![
            ("operation", operation.to_string()),
            ("mechanism", mechanism.to_string()),
        ];
        self.token_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.token_errors.get_or_create(&labels).inc();
        }
    }

    /// One audit group write: its time, how many records it made durable (0: failed).
    pub(crate) fn audit_write(&self, took: Duration, records: usize) {
        self.audit_fsync_seconds.observe(took.as_secs_f64());
        if records == 0 {
            self.audit_write_failures.inc();
        } else {
            self.audit_records.inc_by(records as u64);
        }
    }

    /// A checkpoint was written at Unix time `unix_secs`.
    pub(crate) fn audit_checkpoint(&self, unix_secs: f64) {
        self.audit_last_checkpoint.set(unix_secs);
    }

    /// A call refused by the rate limit of `class`.
    pub(crate) fn rate_limited(&self, class: &str, principal: &str) {
        let mut labels = vec![("class", class.to_string())];
        if self.per_principal {
            labels.push(("principal", label_value(principal)));
        }
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// Key counts by state, live import tokens and queued registry pushes, as read from
    /// the store.
    pub(crate) fn set_store_counts(
        &self,
        keys_by_state: &[(String, i64)],
        import_tokens: i64,
        image_sign_queue: i64,
    ) {
        self.keys.clear();
        for (state, n) in keys_by_state {
            self.keys
                .get_or_create(&vec![("state", state.clone())])
                .set(*n);
        }
        self.import_tokens_live.set(import_tokens);
        self.image_sign_queue.set(image_sign_queue);
    }

    /// The registry in the OpenMetrics text format (what prometheus-client writes).
    pub(crate) fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format 0.0.4, for scrapers and tools that do
    /// not ask for OpenMetrics (`promtool check metrics`, curl).
    pub(crate) fn text(&self) -> String {
        classic_text(&self.openmetrics())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

/// OpenMetrics text to the Prometheus 0.0.4 text format: a counter family `x` is
/// exposed as `x_total` in its HELP and TYPE lines too, and the `# UNIT` and `# EOF`
/// lines (unknown there) go.
fn classic_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A label value from outside (a principal, from a client certificate) made safe for
/// the text format, which prometheus-client writes as is: `\\`, `"` and line feeds
/// escaped as the exposition format defines, other control characters replaced by `?`.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_in_the_classic_text() {
        let m = Metrics::new(false);
        m.call(
            "/hsmd.v1.KeyService/Sign",
            "ok",
            Some("spiffe://x"),
            Duration::from_millis(2),
        );
        let text = m.text();
        assert!(text.contains("# TYPE hsmd_calls_total counter"), "{text}");
        assert!(
            text.contains("# HELP hsmd_calls_total gRPC calls"),
            "{text}"
        );
        assert!(
            text.contains("hsmd_calls_total{method=\"/hsmd.v1.KeyService/Sign\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(!text.contains("spiffe://x"), "principal only when asked");
        assert!(!text.contains("# EOF"));
        assert!(m.openmetrics().ends_with("# EOF\n"));
        assert!(text.contains("le=\"0.0001\"}"), "{text}");
    }

    #[test]
    fn principal_labels_cannot_break_the_text_format() {
        assert_eq!(
            label_value("x\"} 0\nhsmd_fake 1\r\\"),
            "x\\\"} 0\\nhsmd_fake 1?\\\\"
        );
    }

    #[test]
    fn principals_only_when_per_principal() {
        let m = Metrics::new(true);
        m.call("/m", "denied", Some("spiffe://x"), Duration::ZERO);
        m.rate_limited("sign", "spiffe://x");
        let text = m.text();
        assert!(text.contains("principal=\"spiffe://x\""), "{text}");
        assert!(
            text.contains("hsmd_rate_limited_total{class=\"sign\""),
            "{text}"
        );
    }
}
