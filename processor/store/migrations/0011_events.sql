-- Events: what a committed batch tells the world (a level moved, an award issued), written
-- in the same transaction as the ledger rows and states they describe (an outbox), and
-- read in the order a relay numbered them (processor/store/events.py).
--
-- A row is keyed by the request that caused it and its place among that request's events,
-- so a request posted once writes its events once. Rows arrive in commit order, which no
-- insert-time number follows (a batch that started first may commit last), so readers do
-- not follow `id`: position_events() gives each committed row its `position`, one relay at
-- a time (the event_relay row is its lock), in the order the rows became visible to it. A
-- reader that has seen position N has seen every row whose position is at most N, for good.
CREATE TABLE events (
    id         bigserial   NOT NULL,
    position   bigint,
    account_id text        NOT NULL,
    request_id text        NOT NULL,
    seq        integer     NOT NULL,
    kind       text        NOT NULL,
    program    text        NOT NULL,
    day        integer     NOT NULL,
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, request_id, seq)
);
CREATE UNIQUE INDEX events_position ON events (position);
-- The rows waiting for a position: the relay reads only these.
CREATE INDEX events_unpositioned ON events (id) WHERE position IS NULL;
-- The level moves of some programs over some days (the health report, processor.reports).
CREATE INDEX events_moves ON events (program, day) WHERE kind = 'level_moved';

CREATE TABLE event_relay (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_position bigint  NOT NULL
);
INSERT INTO event_relay VALUES (true, 0);

-- Number up to `most` committed rows without a position, after the last one numbered.
-- Relays in any number of processes take turns on the event_relay row.
CREATE FUNCTION position_events(most integer, OUT positioned integer)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
DECLARE
    base bigint;
BEGIN
    positioned := 0;
    -- Most turns find nothing to number: they end here, without locking or writing a row.
    IF NOT EXISTS (SELECT 1 FROM events WHERE position IS NULL) THEN
        RETURN;
    END IF;
    SELECT last_position INTO base FROM event_relay FOR UPDATE;
    WITH waiting AS (
        SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT most
    ), numbered AS (
        SELECT id, base + row_number() OVER (ORDER BY id) AS position FROM waiting
    )
    UPDATE events AS e SET position = n.position FROM numbered AS n WHERE e.id = n.id;
    GET DIAGNOSTICS positioned = ROW_COUNT;
    IF positioned > 0 THEN
        UPDATE event_relay SET last_position = base + positioned;
    END IF;
END
$$;

-- commit_batch (0004) and the batch's events, in one transaction. A new overload, so a
-- release that calls the 0004 one (during a rolling upgrade) still commits; its batches
-- write no events. Each event's data carries its kind, program and day, which are kept in
-- columns of their own for readers to filter on.
CREATE FUNCTION commit_batch(
    account_ids text[], expected bigint[],
    changed_ids text[], changed_versions bigint[], changed_states bytea[],
    new_ids text[], new_versions bigint[], new_states bytea[],
    idempotency_accounts text[], idempotency_requests text[],
    idempotency_hashes bytea[], idempotency_responses bytea[],
    ledger_accounts text[], ledger_months integer[], ledger_requests text[],
    ledger_seqs integer[], ledger_programs text[], ledger_program_versions integer[],
    ledger_balances text[], ledger_kinds text[], ledger_amounts bigint[], ledger_rules text[],
    ledger_days integer[],
    receipt_accounts text[], receipt_requests text[], receipt_states bytea[],
    event_accounts text[], event_requests text[], event_seqs integer[], event_data text[],
    OUT conflicts text[]
)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    conflicts := commit_batch(
        account_ids, expected, changed_ids, changed_versions, changed_states,
        new_ids, new_versions, new_states,
        idempotency_accounts, idempotency_requests, idempotency_hashes, idempotency_responses,
        ledger_accounts, ledger_months, ledger_requests, ledger_seqs, ledger_programs,
        ledger_program_versions, ledger_balances, ledger_kinds, ledger_amounts, ledger_rules,
        ledger_days, receipt_accounts, receipt_requests, receipt_states);
    IF cardinality(conflicts) > 0 OR cardinality(event_accounts) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO events (account_id, request_id, seq, kind, program, day, data)
    SELECT e.account_id, e.request_id, e.seq, d.data->>'kind', d.data->>'program',
           (d.data->>'day')::integer, d.data - 'kind' - 'program' - 'day'
    FROM unnest(event_accounts, event_requests, event_seqs, event_data)
             AS e(account_id, request_id, seq, data),
         LATERAL (SELECT e.data::jsonb AS data) AS d
    ON CONFLICT DO NOTHING;
END
$$;

-- Where each configured sender (processor/outbox: "webhook", "log") has delivered to: the
-- last position it sent and was told was received. One process delivers for a sender at a
-- time, holding its row (FOR UPDATE SKIP LOCKED) while it sends and moves it on.
CREATE TABLE event_deliveries (
    sender        text        PRIMARY KEY,
    last_position bigint      NOT NULL DEFAULT 0,
    delivered_at  timestamptz,
    failures      integer     NOT NULL DEFAULT 0,
    last_error    text        NOT NULL DEFAULT ''
);
