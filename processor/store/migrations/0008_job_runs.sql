-- One row per run of a scheduled job (processor.jobs). A run is its job and the business
-- day it runs as of: the same job as of the same day is one run, however many processes
-- or people start it. The runner commits accounts in chunks, in account order, and after
-- each chunk records the last account it finished (after_account), so a run stopped in the
-- middle (a crash, a deploy) resumes after it; an account committed before the stop but
-- not yet recorded is found by its idempotency row and not changed twice.
CREATE TABLE job_runs (
    job              text        NOT NULL CHECK (job <> ''),
    as_of            date        NOT NULL,
    status           text        NOT NULL DEFAULT 'running'
                                 CHECK (status IN ('running', 'finished', 'failed')),
    after_account    text        NOT NULL DEFAULT '',
    accounts_total   bigint      NOT NULL DEFAULT 0 CHECK (accounts_total >= 0),
    accounts_done    bigint      NOT NULL DEFAULT 0 CHECK (accounts_done >= 0),
    accounts_changed bigint      NOT NULL DEFAULT 0 CHECK (accounts_changed >= 0),
    postings         bigint      NOT NULL DEFAULT 0 CHECK (postings >= 0),
    attempts         integer     NOT NULL DEFAULT 1 CHECK (attempts > 0),
    error            text        NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (job, as_of)
);

CREATE INDEX job_runs_latest ON job_runs (job, started_at DESC);
