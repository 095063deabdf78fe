-- commit_batch (0003) with its replay check made per card.
--
-- Request ids are unique per card, not across cards. 0003 took a request id as posted by
-- this batch when any card's row of that id was inserted, so a request another batch had
-- posted on one card went unnoticed when the same id was new on another card of the
-- batch, and its ledger rows were written again. The check now compares (account, request
-- id) pairs. Everything else is 0003's, unchanged.
CREATE OR REPLACE FUNCTION commit_batch(
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
        RETURNING account_id, request_id
    )
    SELECT coalesce(array_agg(k.request_id ORDER BY k.request_id), '{}') INTO replayed
    FROM unnest(idempotency_accounts, idempotency_requests) AS k(account_id, request_id)
    WHERE NOT EXISTS (
        SELECT 1 FROM inserted AS i
        WHERE i.account_id = k.account_id AND i.request_id = k.request_id
    );

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
