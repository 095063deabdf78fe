"""Scheduled jobs: what the program manual runs "when the job runs".

The path of a job run, beside the path of a transaction:

1. **Schedule** (processor.jobs.schedule): inside ``loyalty serve``, procrastinate defers
   each job once per tick of its schedule across every process and host (PostgreSQL
   decides which process defers it) and a worker in each process runs what was deferred;
   ``loyalty jobs run NAME`` runs one at a terminal, with a progress bar.
2. **Run** (processor.jobs.runner): a run is a job and the business day it runs as of. It
   walks every account in account order, in chunks; each chunk is evaluated by the
   reference engine's ``run_job`` (only the steps its job names) and committed by the same
   ``commit_batch`` as transactions: optimistic concurrency against live traffic, and one
   idempotency row per changed account (``job:<job>:<as-of>:<card>``), so an account is
   changed once per run whatever crashes in between. After each chunk the run records its
   last account (processor.store.job_runs), so a stopped run resumes after it.
3. **Cache**: the committed states go to Redis, as a batch's do.

The jobs themselves are named in processor.jobs.named.
"""
