-- The catalog: what program searches filter on, which versions are active, how cards of a
-- generated series are numbered, and the opening balances still to be posted.

-- Copied from the program file when it is stored, so that searches never parse sources.
ALTER TABLE programs
    ADD COLUMN name          text        NOT NULL DEFAULT '',
    ADD COLUMN description   text        NOT NULL DEFAULT '',
    ADD COLUMN card_type     text        NOT NULL DEFAULT '',
    ADD COLUMN serial_prefix text        NOT NULL DEFAULT '',
    ADD COLUMN updated_at    timestamptz NOT NULL DEFAULT now();

-- A card is served by the active program file of its five-digit serial prefix: two active
-- program files never share one.
CREATE UNIQUE INDEX programs_active_prefix ON programs (serial_prefix) WHERE status = 'active';

-- The tender, award and loyalty programs each stored program file version carries.
CREATE TABLE program_parts (
    program_id  text    NOT NULL,
    version     integer NOT NULL,
    part_id     text    NOT NULL CHECK (part_id <> ''),
    type        text    NOT NULL CHECK (type IN ('tender', 'award', 'loyalty')),
    name        text    NOT NULL,
    description text    NOT NULL DEFAULT '',
    PRIMARY KEY (program_id, version, part_id),
    FOREIGN KEY (program_id, version) REFERENCES programs (id, version) ON DELETE CASCADE
);

-- One row, increased in the transaction of every change of the active versions, so that
-- each server process notices an activation by reading one integer.
CREATE TABLE program_activations (
    singleton  boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO program_activations DEFAULT VALUES;

-- The sequence number of a generated card (prefix, sequence, check digit); NULL for an
-- imported one. A series continues after its highest sequence.
ALTER TABLE cards ADD COLUMN sequence bigint CHECK (sequence > 0);
CREATE UNIQUE INDEX cards_series_sequence ON cards (definition, series, sequence)
    WHERE sequence IS NOT NULL;

-- Value a card is to receive that the catalog does not post itself: the balances of an
-- imported card, or the amount of a batch activation. A job posts each row through the
-- ledger (so that balances still equal their ledger rows) and sets posted_at.
CREATE TABLE card_opening_balances (
    card_number text        NOT NULL PRIMARY KEY CHECK (card_number <> ''),
    program_id  text        NOT NULL,
    version     integer     NOT NULL,
    tender      bigint      CHECK (tender >= 0),
    loyalty     bigint      CHECK (loyalty >= 0),
    award       bigint      CHECK (award >= 0),
    location    text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    posted_at   timestamptz
);
CREATE INDEX card_opening_balances_unposted ON card_opening_balances (created_at)
    WHERE posted_at IS NULL;
