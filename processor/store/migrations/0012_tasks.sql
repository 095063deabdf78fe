-- Tasks: people's work that events make (processor/outbox/tasks.py), by the task rules of
-- the card's program: a manager's review of an upgrade, a gift to dispatch. One task per
-- event and rule (the unique key), however often the event is delivered.
CREATE TABLE tasks (
    id          bigserial   PRIMARY KEY,
    event_key   text        NOT NULL,
    rule        text        NOT NULL,
    position    bigint      NOT NULL,
    program     text        NOT NULL,
    account_id  text        NOT NULL,
    title       text        NOT NULL,
    team        text        NOT NULL,
    details     jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'open'
                            CHECK (status IN ('open', 'claimed', 'done')),
    claimed_by  text        NOT NULL DEFAULT '',
    claimed_at  timestamptz,
    done_at     timestamptz,
    outcome     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_key, rule)
);
-- The work still to do, by team, oldest first.
CREATE INDEX tasks_to_do ON tasks (team, id) WHERE status <> 'done';
