-- What a loyalty program's accounts spent in the scorecard's month (processor.jobs.scorecards,
-- from each account's spend by month): the amount, in minor units of the program's currency,
-- and the accounts that spent anything. Rows of runs before this migration count none.
ALTER TABLE scorecards
    ADD COLUMN spent_mtd    bigint NOT NULL DEFAULT 0,
    ADD COLUMN spending_mtd bigint NOT NULL DEFAULT 0;
