-- Wrong PINs in a row, per card: at the server's pin_attempts_max the card's PIN is locked
-- (PIN_LOCKED) until it is cleared (`loyalty cards unlock-pin`); a right PIN clears it.
-- A table of its own, not a column of cards: a count that changes must not tell every
-- process that the card changed (0005's triggers), nor lock the card's row. No foreign key
-- to cards: the bulk loader drops and rebuilds cards' keys, and TRUNCATE cards stays
-- possible; pin_attempts checks that the card exists (the processor deletes no card; a
-- count left by one deleted by hand is cleared by pin_unlock).
CREATE TABLE card_pin_failures (
    card_number text    NOT NULL PRIMARY KEY,
    failures    integer NOT NULL CHECK (failures > 0)
);

-- One batch's PIN attempts, in order: whether each PIN matched (checked by the server,
-- which holds the key) in, 'ok', 'invalid', 'locked' or 'unknown' out. Each card is locked
-- first (a transaction-scoped advisory lock: its count's row may not exist yet), in card
-- order, so that two batches on the same cards in other orders cannot deadlock; attempts on
-- one card from concurrent batches then count one after the other, and none gets past
-- the limit. STRICT: a NULL argument answers NULL, never a card that cannot lock.
CREATE FUNCTION pin_attempts(numbers text[], matched boolean[], attempts_max integer)
RETURNS text[] LANGUAGE plpgsql STRICT AS $$
DECLARE
    outcomes text[] := '{}';
    counted integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('loyalty pin ' || number, 0))
    FROM (SELECT DISTINCT unnest(numbers) AS number ORDER BY 1) AS cards_in_order;
    FOR i IN 1 .. coalesce(array_length(numbers, 1), 0) LOOP
        IF NOT EXISTS (SELECT 1 FROM cards WHERE card_number = numbers[i]) THEN
            outcomes := outcomes || 'unknown'::text;
            CONTINUE;
        END IF;
        SELECT failures INTO counted FROM card_pin_failures WHERE card_number = numbers[i];
        counted := coalesce(counted, 0);
        IF counted >= attempts_max THEN
            outcomes := outcomes || 'locked'::text;
        ELSIF coalesce(matched[i], false) THEN
            IF counted > 0 THEN
                DELETE FROM card_pin_failures WHERE card_number = numbers[i];
            END IF;
            outcomes := outcomes || 'ok'::text;
        ELSE
            INSERT INTO card_pin_failures (card_number, failures) VALUES (numbers[i], 1)
            ON CONFLICT (card_number) DO UPDATE SET failures = card_pin_failures.failures + 1;
            outcomes := outcomes
                || CASE WHEN counted + 1 >= attempts_max THEN 'locked' ELSE 'invalid' END;
        END IF;
    END LOOP;
    RETURN outcomes;
END $$;

-- Support clears a locked PIN: whether the card exists.
CREATE FUNCTION pin_unlock(number text) RETURNS boolean LANGUAGE plpgsql STRICT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('loyalty pin ' || number, 0));
    DELETE FROM card_pin_failures WHERE card_number = number;
    RETURN EXISTS (SELECT 1 FROM cards WHERE card_number = number);
END $$;
