-- hsmd's metadata on PostgreSQL, version 1: the SQLite schema (server/src/store/*.rs)
-- with PostgreSQL's types (BIGINT for integers and flags, BYTEA for DER), plus the
-- triggers that tell every replica's key cache that something changed.

CREATE TABLE keys (
    key_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    usage TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    deletion_time BIGINT,
    destroy_time BIGINT,
    public_key BYTEA,
    idempotency_token TEXT,
    UNIQUE (created_by, idempotency_token)
);
CREATE INDEX keys_by_time ON keys (create_time DESC, key_id DESC);

CREATE TABLE aliases (
    alias TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX aliases_by_key ON aliases (key_id);

CREATE TABLE key_versions (
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    version BIGINT NOT NULL CHECK (version >= 2),
    object_id TEXT NOT NULL UNIQUE,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE key_rotation (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    period_days BIGINT NOT NULL,
    next_time BIGINT NOT NULL
);
CREATE INDEX key_rotation_due ON key_rotation (next_time);

-- Token objects being made, by the replica making them: start-up reconciliation
-- destroys only its own node's half-made objects.
CREATE TABLE creations (
    object_id TEXT PRIMARY KEY,
    start_time BIGINT NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);

CREATE TABLE certificates (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    chain BYTEA NOT NULL,
    chain_length BIGINT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    import_time BIGINT NOT NULL
);
CREATE INDEX certificates_by_expiry ON certificates (not_after);

CREATE TABLE import_tokens (
    token_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    algorithm TEXT NOT NULL,
    wrapping_spec TEXT NOT NULL,
    modulus_len BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    superseded_by TEXT,
    wrapping_key_destroyed BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX import_tokens_by_key ON import_tokens (key_id);

CREATE TABLE key_material (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    fingerprint BYTEA NOT NULL,
    key_check_value TEXT,
    import_time BIGINT,
    valid_to BIGINT
);
CREATE INDEX key_material_by_expiry ON key_material (valid_to);

CREATE TABLE signing_policies (
    namespace TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL,
    key_ref TEXT NOT NULL,
    key_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    repositories TEXT NOT NULL,
    tags TEXT NOT NULL,
    untagged BIGINT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('event', 'manual', 'scheduled')),
    cron TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE registry_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    tag TEXT,
    received BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    due BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX registry_events_due ON registry_events (due);

-- One notification per changing statement on what the key cache holds; PostgreSQL
-- delivers it at commit (never for a rolled-back change) and folds repeats within a
-- transaction into one.
CREATE FUNCTION hsmd_store_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hsmd_store', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION hsmd_store_changed();
CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON aliases
    FOR EACH STATEMENT EXECUTE FUNCTION hsmd_store_changed();
CREATE TRIGGER key_versions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON key_versions
    FOR EACH STATEMENT EXECUTE FUNCTION hsmd_store_changed();
CREATE TRIGGER key_rotation_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON key_rotation
    FOR EACH STATEMENT EXECUTE FUNCTION hsmd_store_changed();
CREATE TRIGGER key_material_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON key_material
    FOR EACH STATEMENT EXECUTE FUNCTION hsmd_store_changed();
