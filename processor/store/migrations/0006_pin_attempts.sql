-- Wrong PINs in a row, per card: at the server's pin_attempts_max the card's PIN is locked
-- (PIN_LOCKED) until it is cleared (`loyalty cards unlock-pin`); a right PIN clears it.
ALTER TABLE cards ADD COLUMN pin_failures integer NOT NULL DEFAULT 0 CHECK (pin_failures >= 0);

-- One batch's PIN attempts, in order: whether each PIN matched (checked by the server,
-- which holds the key) in, 'ok', 'invalid', 'locked' or 'unknown' out. Each card's row is
-- locked while its count is read and changed, so attempts on one card from concurrent
-- batches count one after the other, and none gets past the limit.
CREATE FUNCTION pin_attempts(numbers text[], matched boolean[], attempts_max integer)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    outcomes text[] := '{}';
    failures integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(numbers, 1), 0) LOOP
        SELECT pin_failures INTO failures FROM cards WHERE card_number = numbers[i] FOR UPDATE;
        IF NOT FOUND THEN
            outcomes := outcomes || 'unknown'::text;
        ELSIF failures >= attempts_max THEN
            outcomes := outcomes || 'locked'::text;
        ELSIF matched[i] THEN
            IF failures > 0 THEN
                UPDATE cards SET pin_failures = 0 WHERE card_number = numbers[i];
            END IF;
            outcomes := outcomes || 'ok'::text;
        ELSE
            UPDATE cards SET pin_failures = failures + 1 WHERE card_number = numbers[i];
            outcomes := outcomes
                || CASE WHEN failures + 1 >= attempts_max THEN 'locked' ELSE 'invalid' END;
        END IF;
    END LOOP;
    RETURN outcomes;
END $$;

-- Support clears a locked PIN: whether the card exists.
CREATE FUNCTION pin_unlock(number text) RETURNS boolean LANGUAGE sql AS $$
    UPDATE cards SET pin_failures = 0 WHERE card_number = number RETURNING true
$$;
