-- What the opening-balances job did with each queued card-import balance (processor.jobs):
-- "posted", or "declined REASON: why" (nothing of the card's balances was posted then).
-- A row is taken once: posted_at is set either way.
ALTER TABLE card_opening_balances ADD COLUMN outcome text NOT NULL DEFAULT '';

-- The job reads the queue in card order after the run's last card: this index holds only
-- the rows still queued, so a run does not walk every card ever posted to find them.
CREATE INDEX card_opening_balances_queued ON card_opening_balances (card_number)
    WHERE posted_at IS NULL;
