-- What serving processes used to poll for, told on channels instead
-- (processor.store.notifications): each loop sleeps until a change it waits for commits.
-- A notification is sent when the changing transaction commits, and not at all if it rolls
-- back; PostgreSQL sends one of each (channel, payload) per transaction, however many rows.

-- Events inserted (by a batch's commit or a job's): the relay numbers them.
CREATE FUNCTION notify_events_written() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    -- A statement whose rows were all there already (ON CONFLICT DO NOTHING) tells nothing.
    IF EXISTS (SELECT 1 FROM written) THEN
        PERFORM pg_notify('loyalty_events', 'written');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_written AFTER INSERT ON events
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events_written();

-- One function for the rest: TG_ARGV[0] is the channel, TG_ARGV[1] the payload.
CREATE FUNCTION notify_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], TG_ARGV[1]);
    RETURN NULL;
END
$$;

-- Events numbered (position_events moved the last position): senders and watchers read them.
CREATE TRIGGER events_positioned AFTER UPDATE ON event_relay
    FOR EACH ROW WHEN (NEW.last_position <> OLD.last_position)
    EXECUTE FUNCTION notify_changed('loyalty_events', 'positioned');

-- The active program versions changed (the generation moves with every activation).
CREATE TRIGGER programs_activated AFTER INSERT OR UPDATE ON program_activations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_changed('loyalty_programs', '');

-- An API key added, changed or revoked (keys are never deleted; a truncate is told too).
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_changed('loyalty_keys', '');
