-- Version 2: the cluster's rate-limit buckets (server/src/store/rate_buckets.rs).
CREATE TABLE rate_buckets (
    bucket TEXT PRIMARY KEY,
    micro_tokens BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
