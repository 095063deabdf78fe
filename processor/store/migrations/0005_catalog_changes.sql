-- Every change to a card or a customer is told on the channel `loyalty_catalog`.
--
-- Each serving process keeps the cards and customers its batches read in memory
-- (processor.store.card_cache), which spares a batch whose cards are all held its read of
-- PostgreSQL. A process listens on this channel and forgets what it is told changed; a
-- notification is sent when the changing transaction commits, and not at all if it rolls
-- back. Payloads: `card:<number>`, `customer:<id>`, or `*` (forget everything) for a
-- statement that changed more than 1,000 rows or truncated the table, so a bulk update of a
-- batch of cards sends one notification, not one per card. Inserts are not told: a process
-- holds only cards it found, and a card it holds has its customer row already (a card
-- whose customer row is missing is never held).

-- One function for both tables: TG_ARGV[0] is the payload's kind, TG_ARGV[1] the key column.
CREATE FUNCTION notify_catalog_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    -- Separate tests: a TRUNCATE trigger has no transition table to count.
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('loyalty_catalog', '*');
    ELSIF (SELECT count(*) FROM changed_rows) > 1000 THEN
        PERFORM pg_notify('loyalty_catalog', '*');
    ELSE
        PERFORM pg_notify('loyalty_catalog', TG_ARGV[0] || ':' || (to_jsonb(r) ->> TG_ARGV[1]))
        FROM changed_rows AS r;
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with transition tables takes one event, hence one trigger per event.
CREATE TRIGGER cards_updated AFTER UPDATE ON cards
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('card', 'card_number');
CREATE TRIGGER cards_deleted AFTER DELETE ON cards
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('card', 'card_number');
CREATE TRIGGER cards_truncated AFTER TRUNCATE ON cards
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('card', 'card_number');
CREATE TRIGGER customers_updated AFTER UPDATE ON customers
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('customer', 'customer_id');
CREATE TRIGGER customers_deleted AFTER DELETE ON customers
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('customer', 'customer_id');
CREATE TRIGGER customers_truncated AFTER TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog_changed('customer', 'customer_id');
