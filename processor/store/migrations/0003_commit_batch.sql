-- Commits one batch of the transaction path in one statement.
--
-- The same work as the seven statements it replaces (lock, update, insert accounts,
-- idempotency, ledger, receipts inside BEGIN ... COMMIT), in one call: one message to
-- PostgreSQL and one answer, where each statement cost the server a send and a parse of
-- its own. Called in autocommit, so the call is the transaction.
--
-- Optimistic concurrency: the batch names the version it read of every account it writes
-- (0: the account did not exist). The accounts are locked in account-id order, so two
-- batches sharing accounts queue rather than deadlock; then
--   * a version that moved returns its account in `conflicts`, and nothing is written;
--   * an account another batch created, or a request id another batch posted, after the
--     lock looked (rows the lock cannot hold) raises SQLSTATE LY001 with the ids as JSON in
--     the DETAIL ({"conflicts": [...], "replayed": [...]}), which rolls back everything;
--   * an update that does not find its locked row raises LY002: a bug, never a conflict.
-- A ledger row whose key exists belongs to a request another batch posted meanwhile: the
-- idempotency insert reports that request and the batch is rolled back, so skipping the row
-- (ON CONFLICT DO NOTHING) only spares an error.
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
    OUT conflicts text[]
)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
DECLARE
    created text[];
    posted text[];
    missing text[];
    replayed text[];
    updated bigint;
BEGIN
    PERFORM 1 FROM accounts WHERE account_id = ANY(account_ids) ORDER BY account_id FOR UPDATE;
    -- A statement of its own, after the lock: it reads the versions the lock waited for.
    SELECT coalesce(array_agg(e.account_id ORDER BY e.account_id), '{}') INTO conflicts
    FROM unnest(account_ids, expected) AS e(account_id, version)
    LEFT JOIN accounts AS a USING (account_id)
    WHERE coalesce(a.version, 0) <> e.version;
    IF cardinality(conflicts) > 0 THEN
        RETURN;
    END IF;

    WITH inserted AS (
        INSERT INTO idempotency (account_id, request_id, payload_hash, response)
        SELECT * FROM unnest(idempotency_accounts, idempotency_requests,
                             idempotency_hashes, idempotency_responses)
        ON CONFLICT (account_id, request_id) DO NOTHING
        RETURNING request_id
    )
    SELECT coalesce(array_agg(request_id), '{}') INTO posted FROM inserted;
    SELECT coalesce(array_agg(r ORDER BY r), '{}') INTO replayed
    FROM unnest(idempotency_requests) AS r WHERE r <> ALL(posted);

    WITH inserted AS (
        INSERT INTO accounts (account_id, version, state)
        SELECT * FROM unnest(new_ids, new_versions, new_states)
        ON CONFLICT (account_id) DO NOTHING
        RETURNING account_id
    )
    SELECT coalesce(array_agg(account_id), '{}') INTO created FROM inserted;
    SELECT coalesce(array_agg(n ORDER BY n), '{}') INTO missing
    FROM unnest(new_ids) AS n WHERE n <> ALL(created);

    IF cardinality(missing) > 0 OR cardinality(replayed) > 0 THEN
        RAISE EXCEPTION 'the batch raced another batch'
            USING ERRCODE = 'LY001',
                  DETAIL = json_build_object('conflicts', missing, 'replayed', replayed)::text;
    END IF;

    UPDATE accounts AS a SET version = s.version, state = s.state, updated_at = now()
    FROM unnest(changed_ids, changed_versions, changed_states) AS s(account_id, version, state)
    WHERE a.account_id = s.account_id AND a.version = s.version - 1;
    GET DIAGNOSTICS updated = ROW_COUNT;
    IF updated <> cardinality(changed_ids) THEN
        RAISE EXCEPTION 'updated % of % locked accounts', updated, cardinality(changed_ids)
            USING ERRCODE = 'LY002';
    END IF;

    INSERT INTO ledger (account_id, month, request_id, seq, program, program_version, balance,
                        kind, amount, rule, day)
    SELECT * FROM unnest(ledger_accounts, ledger_months, ledger_requests, ledger_seqs,
                         ledger_programs, ledger_program_versions, ledger_balances,
                         ledger_kinds, ledger_amounts, ledger_rules, ledger_days)
    ON CONFLICT DO NOTHING;

    INSERT INTO receipts (account_id, request_id, state)
    SELECT * FROM unnest(receipt_accounts, receipt_requests, receipt_states)
    ON CONFLICT (account_id, request_id) DO UPDATE SET state = excluded.state, updated_at = now();
END
$$;
