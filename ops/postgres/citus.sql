-- Distributing the processor's tables over a Citus cluster: written for the schema of
-- processor/store/migrations (run after them, on the coordinator), not run in this
-- repository's tests (no Citus server is available to them). See ops/README.md.
--
-- Everything a transaction writes belongs to one card: its account, its ledger rows, its
-- receipts, its idempotency rows, the card itself. Distributing all of them by the card
-- number, co-located, keeps each card's rows on one worker, so one card's reads and writes
-- are single-shard. A batch touches many cards, so its commit spans shards: Citus commits
-- it atomically with two-phase commit. The batch is one call of commit_batch(), which is
-- deliberately not distributed (create_distributed_function): it runs on the coordinator,
-- whose statements Citus routes to the shards of each card, in the one transaction.

-- The program catalog: small, read by every server, changed rarely: a copy on every worker.
SELECT create_reference_table('programs');
SELECT create_reference_table('program_parts');
SELECT create_reference_table('program_activations');
-- API keys: a few rows, read by every server every few seconds.
SELECT create_reference_table('api_keys');
-- Scheduled job runs: a row per job and day, updated once per chunk. procrastinate's own
-- tables (the jobs' queue) stay local to the coordinator: its functions lock and notify
-- on them in ways Citus does not distribute, and they hold a few rows a day.
SELECT create_reference_table('job_runs');
-- Scorecards: a few rows per program and day; the members of a running scorecards run are
-- as many as its customers but live only until it finishes. Both read whole by program.
SELECT create_reference_table('scorecards');
SELECT create_reference_table('scorecard_members');

-- The transaction path, by card number (the account id), in one co-location group.
SELECT create_distributed_table('accounts', 'account_id', shard_count => 64);
SELECT create_distributed_table('cards', 'card_number', colocate_with => 'accounts');
SELECT create_distributed_table('idempotency', 'account_id', colocate_with => 'accounts');
SELECT create_distributed_table('receipts', 'account_id', colocate_with => 'accounts');
-- The ledger is partitioned by month; Citus distributes the parent and every partition,
-- including those ensure_ledger_partition() creates later.
SELECT create_distributed_table('ledger', 'account_id', colocate_with => 'accounts');
SELECT create_distributed_table('card_opening_balances', 'card_number', colocate_with => 'accounts');
SELECT create_distributed_table('card_pin_failures', 'card_number', colocate_with => 'accounts');

-- Customers are read by id (one query per batch for its cards' customers): their own group.
SELECT create_distributed_table('customers', 'customer_id', shard_count => 32);

-- The audit log: one row per administrative call, rare next to transactions; a copy on
-- every worker, so a change to a reference table and its row commit together anywhere.
SELECT create_reference_table('audit_log');

-- Events (migration 0011): read in one order, the relay's positions, which one place must
-- give. They stay on the coordinator, as Citus-managed local tables: commit_batch runs there
-- and writes them in the batch's own transaction, beside the shards' rows. A batch's events
-- are a few rows at most (level moves and awards issued), so they add little to it.
SELECT citus_add_local_table_to_metadata('events');
SELECT citus_add_local_table_to_metadata('event_relay');
SELECT citus_add_local_table_to_metadata('event_deliveries');

-- Tasks (migration 0012): a few rows a day, made from events and read whole by team; a
-- local table beside the events they come from.
SELECT citus_add_local_table_to_metadata('tasks');
