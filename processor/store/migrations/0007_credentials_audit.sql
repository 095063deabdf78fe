-- API keys (processor.store.credentials): a caller presents "lk_<key_id>_<secret>"; only the
-- SHA-256 of the secret is kept, so the table read by anyone cannot be used to call. The
-- secret is 32 random bytes: a fast hash is enough (no password to guess), and the lookup
-- is by key_id, the hashes compared in constant time by the server.
-- roles: of processor.service.roles' table; cards: set for a card-scoped key (a customer's
-- app), which may act only on these cards. demo: made by `loyalty serve --demo` with a
-- published secret; only a demo server accepts it. A key is revoked, never deleted, so the
-- audit log's principals stay explained.
CREATE TABLE api_keys (
    key_id      text        NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    roles       text[]      NOT NULL CHECK (cardinality(roles) > 0),
    cards       text[],
    secret_hash bytea       NOT NULL,
    demo        boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Every administrative call: who (principal and how they proved it), with which roles,
-- which RPC on what, its outcome and the call's request id. A change's row is written in
-- the same transaction as the change (processor.service.audit), so a change without its
-- row, or a row of a change rolled back, cannot be. Append-only: rows cannot be changed or
-- removed through the processor's role (the trigger refuses UPDATE, DELETE and TRUNCATE).
CREATE TABLE audit_log (
    sequence    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    principal   text        NOT NULL,
    method      text        NOT NULL,  -- how the caller proved who it is: api_key, token, certificate
    roles       text[]      NOT NULL,
    rpc         text        NOT NULL,
    target      text        NOT NULL,
    outcome     text        NOT NULL,  -- OK, or the status code and reason of the refusal
    request_id  text        NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
