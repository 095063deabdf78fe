"""The limits of the gRPC contract and of the store, each defined once.

Every layer that enforces a limit reads it here: admission of the request messages
(:mod:`processor.wire.admission`), the services, the JSON request files of the tools
(:mod:`processor.tools.records`, which apply the same rules), the program model where a
program file defines what requests name, the store (whose checks mirror the schema's CHECK
constraints), the account cache, and the compiled engine through ``ext/limits.pxd``, a
hand-kept copy that ``tests/test_limits.py`` holds equal to this module.

A name ends with its unit: ``CHARS`` (characters), ``DIGITS``, ``BYTES``, ``UNITS`` (integer
minor units of money or points), or nothing for a count. Where two layers deliberately hold
different limits for one thing, both are here and the longer name says which layer and why
(``..._STORED_...``: what the store holds, beyond what a client may send). Where the
contract documents a value (``proto/loyalty/v1/*.proto``), tests/test_limits.py holds its
text to the value here: changing one is changing the contract.
"""

from __future__ import annotations

from typing import Final

from processor import calendar

# --------------------------------------------------------------------------- request context

REQUEST_ID_CHARS_MAX: Final = 64
"""A client's request id (and the original_id and preauthorization_id naming one), as
common.proto documents: room for a UUID or a store-register-sequence."""

JOB_REQUEST_ID_PREFIX: Final = "job:"
"""How the request ids of the processor's scheduled jobs begin (``job:<job>:<as-of
date>:<card>``, processor.jobs); a client's request id may not, so the two never meet."""

CARD_DIGITS_MIN: Final = 8
"""Shortest card number a transaction names: a five-digit serial prefix, two sequence
digits and the Luhn check digit, the shortest number a card definition generates."""

CARD_DIGITS_MAX: Final = 32
"""Longest card number a request or a card import file names: imported numbers need not
follow ISO/IEC 7812, so this is wider than GENERATED_CARD_DIGITS_MAX."""

GENERATED_CARD_DIGITS_MAX: Final = 19
"""Longest number a card definition generates, the ISO/IEC 7812 limit for a primary account
number."""

CARD_SERIAL_PREFIX_DIGITS: Final = 5
"""The manual's card serial number prefix is exactly five digits; it routes a card number to
its program file."""

PIN_DIGITS_MAX: Final = 12
"""Longest PIN a request carries or a card definition asks for, the ISO 9564 maximum."""

PIN_KEY_CHARS_MIN: Final = 32
"""The server's PIN key (``LOYALTY_PIN_KEY``), required outside the demo: a secret this long
is not guessed, and without it no stored PIN hash can be tried offline."""

PIN_ATTEMPTS_MAX: Final = 5
"""Wrong PINs in a row after which a card's PIN is locked (PIN_LOCKED) until cleared; the
default of the ``pin_attempts_max`` setting."""

LOCATION_CHARS_MAX: Final = 64
"""A store's location id, a key of the program's store directory."""

REQUEST_ID_HEADER_CHARS_MAX: Final = 128
"""An ``x-request-id`` call header: a log correlation id, often a proxy's or a tracer's, not
the transaction's request id; a longer one is replaced, never refused, so it may be long."""

# --------------------------------------------------------------------------- purchases

AMOUNT_UNITS_MAX: Final = 10**14
"""Largest amount a request names, in minor units (a trillion dollars): the sum of a whole
purchase stays far inside the ledger's 64-bit amounts."""

SPENT_MONTH_UNITS_MAX: Final = 2**62
"""Most a loyalty account counts as spent in one month, in minor units: far above any card's
(46,000 purchases of the largest amount), and it keeps the compiled engine's 64-bit sums
exact; both engines stop counting there."""

LINES_MAX: Final = 1000
"""Lines of one purchase or return, as transactions.proto documents: a bound on the work one
request can cause (ext/limits.pxd holds the compiled engine's copy)."""

LINE_QUANTITY_MAX: Final = 1_000_000
"""Units one line sells or returns, as common.proto documents."""

HIERARCHY_NODES_MAX: Final = 16
"""Merchandise hierarchy nodes of one line, as common.proto documents."""

LINE_ATTRIBUTES_MAX: Final = 64
"""Attributes of one line; item rules test a few, so this only bounds a line's size."""

TENDERS_MAX: Final = 32
"""Tenders of one purchase, as transactions.proto documents."""

REDEEM_CODES_MAX: Final = 32
"""Coupon and certificate codes one purchase presents, as transactions.proto documents."""

NAME_CHARS_MAX: Final = 64
"""An item id (common.proto: 1 to 64 characters) and every other name a request matches
against a program file: codes, engagement kinds, hierarchy nodes, attribute names."""

TENDER_TYPE_CHARS_MAX: Final = 32
"""A tender type ("cash", "visa") as a program's tender rules name it."""

EXCHANGE_RATE_CHARS_MAX: Final = 32
"""The text of an exchange rate: its nine decimals and any sensible integer part fit."""

EXCHANGE_RATE_DECIMALS_MAX: Final = 9
"""Decimals of an exchange rate: what processor.money.convert accepts."""

ENGAGEMENT_COUNT_MAX: Final = 1000
"""Engagements one request reports, as transactions.proto documents."""

TRANSACTIONS_PER_CALL_MAX: Final = 1_000
"""Transactions of one PostTransactions call, as transactions.proto documents."""

# --------------------------------------------------------------------------- customers

CUSTOMER_ID_CHARS_MAX: Final = 64
"""A customer's id in the client's systems, as common.proto documents."""

AUDIENCES_MAX: Final = 256
"""Audience lists one customer is a member of, as common.proto and admin.proto document."""

AUDIENCE_CHARS_MAX: Final = 128
"""An audience membership, a list id or ``<list id>:<stratum>``: a list id of
IDENTIFIER_CHARS_MAX leaves room for its stratum."""

# --------------------------------------------------------------------------- program files

IDENTIFIER_CHARS_MAX: Final = 64
"""An id a program file gives a program, series, level, rule, list or attribute, and by which
requests name it."""

TEXT_CHARS_MAX: Final = 200
"""A name, description or address line in a program file; requests name a card batch by its
name, so they take the same limit."""

PROGRAM_FILE_BYTES_MAX: Final = 4 * 1024 * 1024
"""A program file, as admin.proto documents; ``loyalty check`` reads files by the same
limit, so that a file it passes can be stored."""

PROGRAM_FILE_DEPTH_MAX: Final = 32
"""Nesting of mappings and lists in a program file; the demo program nests 9 deep. Deeper
documents are refused before they are built (a recursive build would exhaust the stack)."""

PROGRAM_FILE_NODES_MAX: Final = 100_000
"""Mappings, lists and values in a program file; the demo program has about 800. Bounds the
work of building and validating one upload, which a 4 MiB file of one-character list items
(two million nodes) would otherwise make seconds long."""

CARD_IMPORT_BYTES_MAX: Final = 4 * 1024 * 1024
"""A card import file one ImportCards call reads, as admin.proto documents."""

# --------------------------------------------------------------------------- admin calls

GENERATE_CARDS_MAX: Final = 10_000
"""Cards one GenerateCards call makes, as admin.proto documents; call again to continue."""

SEARCH_PAGE_SIZE_MAX: Final = 25
"""Programs of one SearchPrograms page, as admin.proto documents (the manual's "Show More"
steps)."""

LEDGER_PAGE_SIZE_MAX: Final = 1_000
"""Ledger rows of one ListLedger page, as admin.proto documents."""

AWARDS_PAGE_MAX: Final = 100
"""Awards of one ListAwards page, as awards.proto documents."""

AWARD_EXPIRING_NOTICE_DAYS: Final = 7
"""How long before its last day an active coupon or certificate is told as expiring (an
``award_expiring`` event, written once per award and expiry day by the award-expiry job's
first run within this many days: a night missed is made up by the next)."""

MONTHLY_REVIEW_GRACE_DAYS: Final = 3
"""Days into a month the monthly review waits before it reviews the month before (it runs
as of the 4th): a purchase dated in that month and posted up to this many days after it
(an offline till's, a store's local date behind UTC) still counts. One posted later counts
in its month's spend, but that month has been reviewed."""

ESCROW_RELEASED_LOOKBACK_DAYS: Final = 7
"""How far back the escrow-release job looks for points released from escrow: each release
is told once (a ``points_released`` event per loyalty program and release day), by the job's
first run on or after its day within this many days: a night missed is made up by the next."""

LAPSED_AWARDS_KEPT_DAYS: Final = 30
"""How long the award-expiry job keeps a coupon that can no longer be used (expired,
redeemed or void) after its expiry day, so that one presented then is answered as expired,
not unknown; then it removes it from the loyalty account's state (the ledger keeps its
postings). One without an expiry day is kept, and so are certificates: the program
scorecard counts an award program's certificates, issued and redeemed, for life."""

SCORECARD_MONTHS_MAX: Final = 36
"""Months of one GetScorecard answer (and `loyalty report scorecard`), as admin.proto
documents: three years of monthly columns."""

EVENTS_PAGE_SIZE_MAX: Final = 1_000
"""Events of one ListEvents page, and of one message of WatchEvents, as admin.proto
documents."""

EVENTS_RELAY_ROWS_MAX: Final = 10_000
"""Events one turn of the relay numbers (processor.store.events.position_events); more wait
for its next turn, a moment later."""

EVENTS_RELAY_SECONDS: Final = 0.2
"""How often each serving process's relay numbers the events committed since its last turn
while PostgreSQL's notifications are not heard (processor.store.notifications); heard, it
numbers them when their commit is told."""

NOTIFIED_POLL_SECONDS: Final = 30.0
"""How often a loop that PostgreSQL tells of changes (the event relay and senders, the
program registry, the API keys) looks anyway while it is told: a guard, not the path."""

EVENTS_WATCHERS_MAX: Final = 64
"""WatchEvents calls one process serves at once; more are refused (RESOURCE_EXHAUSTED).
Each reads PostgreSQL every 0.2 s on the pool the transactions use."""

EVENTS_KEPT_DAYS_DEFAULT: Final = 400
"""Days an event is kept once every sender has had it (the events_kept_days setting): over
a year, so the health report's twelve months have their moves."""

EVENTS_PRUNED_PER_STATEMENT: Final = 10_000
"""Old events one statement removes; the schedule's maintenance removes them in turns."""

EVENTS_DELIVERY_PAGE_MAX: Final = 500
"""Events one delivery sends (one webhook POST): a sender behind by more catches up a page
at a time, at once."""

EVENTS_DELIVERY_RETRY_SECONDS_MAX: Final = 60.0
"""Longest pause between two tries of a delivery that keeps failing (from 1 s, doubling)."""

TASKS_PAGE_SIZE_MAX: Final = 1_000
"""Tasks of one ListTasks page, as admin.proto documents."""

TASK_TEAM_CHARS_MAX: Final = 100
"""A task rule's team (who should do its tasks), and a ListTasks request's."""

# --------------------------------------------------------------------------- messages and errors

CLIENT_DEADLINE_FLOOR_SECONDS: Final = 0.2
"""The latency objective (99 % of calls within 200 ms, ops/prometheus/alerts.yml): a call
that arrives with less time than this left and then runs out of it failed on the client's
own deadline, not the service's availability (loyalty_client_deadline_exceeded_total)."""

MESSAGE_BYTES_MAX: Final = 8 * 1024 * 1024
"""A gRPC message either way: twice a 4 MiB program or card import file, so either fits with
the rest of its message (grpc's default is 4 MiB)."""

PEM_FILE_BYTES_MAX: Final = 1024 * 1024
"""A TLS certificate, key or CA bundle file (processor.service.tls); no PEM file is larger."""

STATUS_MESSAGE_CHARS_MAX: Final = 1000
"""The message of a failed call's status, cut so that its trailers stay under the 8 KiB of
trailing metadata clients accept by default."""

STATUS_DETAILS_BYTES_MAX: Final = 3000
"""A serialized google.rpc.Status in a failed call's trailer, before base64 (4,000 after):
with the message it stays under the 8 KiB of trailing metadata clients accept by default."""

VIOLATION_CHARS_MAX: Final = 200
"""Each of a field violation's field and description, cut so that many fit in the details."""

# --------------------------------------------------------------------------- the store

CARD_NUMBER_STORED_CHARS_MAX: Final = 64
"""An account id (a card number) as the store holds it, and so the account cache: the
schema's CHECK on accounts.account_id and cards.card_number (a change takes a migration);
wider than CARD_DIGITS_MAX, so every number a request names fits."""

REQUEST_ID_STORED_CHARS_MAX: Final = 128
"""A request id as the ledger, receipts and idempotency hold it: besides clients' ids
(REQUEST_ID_CHARS_MAX) they hold ids the processor makes, such as a scheduled job's
``<job id>:<card number>``."""

PAYLOAD_HASH_BYTES_MAX: Final = 64
"""A request's payload hash: room for any BLAKE2b digest (the pipeline writes 16 bytes)."""

RESPONSE_BYTES_MAX: Final = 1024 * 1024
"""An encoded answer kept to answer replays: far above any answer, far below the column's
1 GB."""

ENCODED_BLOB_BYTES_MAX: Final = 4 * 1024 * 1024
"""An encoded account state, receipt or result; a larger one is a runaway account or damaged
data."""

ACCOUNT_VERSION_MAX: Final = 2**63 - 1
"""An account's version: accounts.version is a PostgreSQL bigint, and the cache keeps it."""

EXPECTED_VERSION_MAX: Final = ACCOUNT_VERSION_MAX - 1
"""The version a commit was evaluated at: the commit writes the next one, which must fit."""

LEDGER_DAY_MAX: Final = calendar.days_from_civil(9999, 12, 31)
"""The last business day a posting may carry: dates are written YYYY-MM-DD."""

BALANCE_UNITS_MAX: Final = 10**15
"""Largest opening balance a card import or an account file gives, in minor or point units:
well inside the ledger's 64-bit amounts."""

BATCH_ROWS_MAX: Final = 50_000
"""Rows of each kind (accounts, postings, receipts, request ids) one commit may carry."""

LOOKUP_KEYS_MAX: Final = 50_000
"""Keys (card numbers, customer ids, request ids) one store lookup may ask for: one
array-bound statement each."""

# --------------------------------------------------------------------------- the account cache

CACHE_KEY_PREFIX_CHARS_MAX: Final = 64
"""The prefix of every cache key (the ``cache_key_prefix`` setting): room to name a
deployment, an environment and a run, short next to the state each key holds."""

# --------------------------------------------------------------------------- the card cache

CARD_CACHE_CARDS_MAX: Final = 200_000
"""Cards (with their customers) one serving process holds in memory
(processor.store.card_cache), about 300 bytes each: 60 MB at most. The oldest is let go
first."""

CARD_CACHE_SECONDS: Final = 60.0
"""How long a held card is used before it is read again: a backstop only, since every
change is told through PostgreSQL's notifications."""

# --------------------------------------------------------------------------- credentials and audit

API_KEY_NAME_CHARS_MAX: Final = 64
"""A key's name (who holds it: "pos-gateway-eu"), shown in lists and the audit log."""

API_KEY_CARDS_MAX: Final = 100
"""Cards a card-scoped key or token may name: a customer's own cards."""

CREDENTIAL_HEADER_CHARS_MAX: Final = 4096
"""An ``authorization`` or ``x-api-key`` header; a longer one is refused unread (a JWT
with its claims is well under 2 KB; gRPC itself refuses metadata over 8 KiB)."""

VERIFIED_TOKENS_MAX: Final = 10_000
"""Tokens one process holds as verified (until they expire), so a caller's repeated token
is not checked again on every call; when full, the table starts again empty."""

JWKS_BYTES_MAX: Final = 1024 * 1024
"""A JWKS file or answer of the issuer's JWKS URL; no key set is larger."""

JWKS_READ_SECONDS: Final = 10.0
"""Longest wait for the issuer's JWKS URL to answer."""

JWKS_REFRESH_SECONDS: Final = 3600.0
"""How often the JWKS is read again (a key the issuer withdrew stops being trusted then, and
tokens verified with it are checked again)."""

JWKS_MISS_SECONDS: Final = 60.0
"""A token naming a key id the JWKS does not hold reads it again at most this often."""

KEYS_MISS_READ_GAP_SECONDS: Final = 0.1
"""Least time between reads of the API keys made because a call presented an unknown key
id: made-up ids cost at most ten small reads a second, whatever their number."""

CERTIFICATES_HELD_MAX: Final = 1_000
"""Client certificates one process remembers the principal of; when full, it starts again."""

TOKEN_LEEWAY_SECONDS_MAX: Final = 300
"""The most clock skew a token's times may be given (``auth_token_leeway_seconds``)."""

AUDIT_TEXT_CHARS_MAX: Final = 500
"""An audit row's principal, target, outcome and request id, each cut to this."""

AUDIT_PAGE_SIZE_MAX: Final = 1_000
"""Rows of one ListAudit page or ``loyalty audit`` run."""

# --------------------------------------------------------------------------- scheduled jobs

JOB_CHUNK_ACCOUNTS_MAX: Final = 5_000
"""Accounts one chunk of a job evaluates and commits together: one commit, whose postings
(a few per changed account at most) stay well under BATCH_ROWS_MAX."""

JOB_SLICE_ACCOUNTS: Final = 100
"""Accounts a job evaluates between two yields of the event loop (a few milliseconds), so
the server's own batches go on while a job runs beside them."""

JOB_CONFLICT_RETRIES_MAX: Final = 20
"""Times a chunk's accounts are read and evaluated again because live transactions changed
them first; past it the run fails and its next start goes on from the chunk."""
