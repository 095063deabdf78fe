-- Program scorecards (processor.jobs.scorecards): what the `scorecards` job counted as of a
-- business day, per program (a tender, award or loyalty program of a program file) and, for
-- loyalty programs, per level ('' is the whole program). A run adds each chunk of accounts
-- to its rows in the transaction that records the chunk's progress (job_runs), so a run
-- resumed after a crash counts every account once. The month's column of a scorecard is the
-- latest finished run in that month; LTD figures are lifetime to the as-of day, MTD from the
-- first of its month. Counts of accounts, customers and cards, and sums in the program's
-- units (points, or minor units of its currency).
CREATE TABLE scorecards (
    program_id            text    NOT NULL CHECK (program_id <> ''),
    part                  text    NOT NULL CHECK (part <> ''),
    part_type             text    NOT NULL CHECK (part_type IN ('tender', 'award', 'loyalty')),
    as_of                 date    NOT NULL,
    level                 text    NOT NULL,
    accounts_active       bigint  NOT NULL DEFAULT 0,
    accounts_registered   bigint  NOT NULL DEFAULT 0,
    issued_ltd            bigint  NOT NULL DEFAULT 0,
    issued_mtd            bigint  NOT NULL DEFAULT 0,
    redeemed_ltd          bigint  NOT NULL DEFAULT 0,
    redeemed_mtd          bigint  NOT NULL DEFAULT 0,
    expired_ltd           bigint  NOT NULL DEFAULT 0,
    expired_mtd           bigint  NOT NULL DEFAULT 0,
    outstanding           bigint  NOT NULL DEFAULT 0,
    escrowed              bigint  NOT NULL DEFAULT 0,
    certificates_issued_ltd   bigint NOT NULL DEFAULT 0,
    certificates_issued_mtd   bigint NOT NULL DEFAULT 0,
    certificates_redeemed_ltd bigint NOT NULL DEFAULT 0,
    certificates_outstanding  bigint NOT NULL DEFAULT 0,
    e_awards_issued_ltd   bigint  NOT NULL DEFAULT 0,
    e_awards_issued_mtd   bigint  NOT NULL DEFAULT 0,
    e_awards_outstanding  bigint  NOT NULL DEFAULT 0,
    e_awards_redeemed_ltd bigint  NOT NULL DEFAULT 0,
    -- Set when the run finishes, from scorecard_members and the catalog.
    customers             bigint  NOT NULL DEFAULT 0,
    members_with_points   bigint  NOT NULL DEFAULT 0,
    customers_total       bigint  NOT NULL DEFAULT 0,
    cards_total           bigint  NOT NULL DEFAULT 0,
    card_series           bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, part, as_of, level)
);

-- The customers a running scorecards run has met, so that a customer with several cards
-- counts once ("customers in program", "members who received points"). A run's finish
-- removes its own and any older run's (keyed by the run's day first for that).
CREATE TABLE scorecard_members (
    as_of       date    NOT NULL,
    program_id  text    NOT NULL,
    part        text    NOT NULL,
    level       text    NOT NULL,
    customer_id text    NOT NULL,
    has_points  boolean NOT NULL,
    PRIMARY KEY (as_of, program_id, part, level, customer_id)
);
