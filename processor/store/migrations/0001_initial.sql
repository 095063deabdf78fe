-- The system of record.
--
-- The account id leads the key of every hot table (accounts, ledger, receipts, idempotency),
-- so each can be distributed by it (Citus: create_distributed_table(..., 'account_id'))
-- without a change of key, and one account's rows always live together.
-- Money is integer minor units and points integer units of the program's precision: bigint,
-- never a float. Days are day numbers since 1970-01-01, as in the engine.

CREATE TABLE accounts (
    account_id  text        NOT NULL PRIMARY KEY
                CHECK (account_id <> '' AND length(account_id) <= 64),
    version     bigint      NOT NULL CHECK (version > 0),
    state       bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The calendar month of a day number, as yyyymm: the ledger's partition key.
CREATE FUNCTION ledger_month(day integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (extract(year FROM date '1970-01-01' + day) * 100
            + extract(month FROM date '1970-01-01' + day))::integer;

-- Append-only: one row per posting. Nothing updates or deletes a row; a correction is a
-- new posting. Partitioned by the month of the posting's business day, so old months can be
-- detached and archived whole.
CREATE TABLE ledger (
    account_id      text        NOT NULL CHECK (account_id <> ''),
    month           integer     NOT NULL CHECK (month = ledger_month(day)),
    request_id      text        NOT NULL CHECK (request_id <> ''),
    seq             integer     NOT NULL CHECK (seq >= 0),
    program         text        NOT NULL,
    program_version integer     NOT NULL CHECK (program_version >= 0),
    balance         text        NOT NULL CHECK (balance IN ('points', 'tender', 'award_value')),
    kind            text        NOT NULL CHECK (kind <> ''),
    amount          bigint      NOT NULL,
    rule            text        NOT NULL DEFAULT '',
    day             integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, month, request_id, seq)
) PARTITION BY RANGE (month);

-- Creates the ledger's partition for one month (yyyymm) unless it exists; returns its name.
-- Serialized by an advisory lock so that writers racing into a new month do not collide.
-- search_path is pinned to the schema the function was created in, so it always finds
-- its own ledger.
CREATE FUNCTION ensure_ledger_partition(month integer) RETURNS text
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
DECLARE
    partition_name text := format('ledger_%s', month);
    next_month integer := CASE WHEN month % 100 = 12 THEN month + 89 ELSE month + 1 END;
BEGIN
    IF month IS NULL OR month % 100 NOT BETWEEN 1 AND 12 OR month NOT BETWEEN 100 AND 999999
    THEN
        RAISE EXCEPTION 'ledger month % is not a yyyymm month', month
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('ledger_partition'), month);
    IF to_regclass(partition_name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ledger FOR VALUES FROM (%s) TO (%s)',
            partition_name, month, next_month
        );
    END IF;
    RETURN partition_name;
END
$$;

-- What a posted request did, so a return or void can undo exactly that (codec.Receipt).
CREATE TABLE receipts (
    account_id  text        NOT NULL CHECK (account_id <> ''),
    request_id  text        NOT NULL CHECK (request_id <> ''),
    state       bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, request_id)
);

-- One row per posted client transaction id: a replay is answered with `response` and posts
-- nothing; the same id with another payload (another hash) is refused.
CREATE TABLE idempotency (
    account_id   text        NOT NULL CHECK (account_id <> ''),
    request_id   text        NOT NULL CHECK (request_id <> ''),
    payload_hash bytea       NOT NULL,
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, request_id)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);

-- Program files as submitted, every version kept; one version of a program is active.
CREATE TABLE programs (
    id          text        NOT NULL CHECK (id <> ''),
    version     integer     NOT NULL CHECK (version > 0),
    status      text        NOT NULL CHECK (status IN ('draft', 'active', 'inactive', 'retired')),
    source      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);
CREATE UNIQUE INDEX programs_one_active ON programs (id) WHERE status = 'active';

CREATE TABLE customers (
    customer_id text        NOT NULL PRIMARY KEY CHECK (customer_id <> ''),
    birth_day   integer,
    signup_day  integer,
    audiences   text[]      NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The card number is the account id of the card's accounts.
CREATE TABLE cards (
    card_number text        NOT NULL PRIMARY KEY
                CHECK (card_number <> '' AND length(card_number) <= 64),
    definition  text        NOT NULL,
    program     text        NOT NULL,
    series      text        NOT NULL DEFAULT '',
    batch       text        NOT NULL DEFAULT '',
    status      text        NOT NULL DEFAULT 'inactive'
                CHECK (status IN ('active', 'inactive', 'expired', 'closed')),
    pin_hash    bytea,
    customer_id text,
    expires_day integer,
    attributes  jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_customer ON cards (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX cards_series_batch ON cards (definition, series, batch);
