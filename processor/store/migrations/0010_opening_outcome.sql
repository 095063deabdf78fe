-- What the opening-balances job did with each queued card-import balance (processor.jobs):
-- "posted", or "declined REASON: why" (nothing of the card's balances was posted then).
-- A row is taken once: posted_at is set either way.
ALTER TABLE card_opening_balances ADD COLUMN outcome text NOT NULL DEFAULT '';
