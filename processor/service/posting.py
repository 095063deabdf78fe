"""What every posting RPC does: hand a request to the batcher and wait for its answer.

The answer of a replayed request is the stored one, marked ``replayed``; a fresh one is
the engine's result as the contract encodes it. Dry runs and deadlines are honoured here,
so each servicer stays a list of one-line adapters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from processor import proto
from processor.engine import CompiledProgram
from processor.engine.types import Request, Result
from processor.errors import present
from processor.flow.pipeline import (
    Answer,
    Submission,
    SubmissionBatcher,
    payload_digest,
    payload_hash,
)
from processor.proto import transactions
from processor.service.handlers import Context
from processor.wire import admission, answers


def encode_result(result: Result, program: CompiledProgram) -> bytes:
    """The contract's Result as bytes: built once, they serve both the answer (sent as they
    are, see result_bytes_of) and the idempotency row."""
    return answers.result_bytes(result, program)


def deadline_of(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def hash_of(message: Any) -> bytes:
    """The payload hash of a request message, without its PIN and dry-run flag: a retry
    that re-enters the PIN is still the same request."""
    copy = type(message)()
    copy.CopyFrom(message)
    target = copy.transaction.context if hasattr(copy, "transaction") else copy.context
    target.ClearField("pin")
    target.ClearField("dry_run")
    return payload_hash(copy)


_TRANSACTION_FIELD = b"\x0a"  # PostTransactionRequest.transaction: field 1, length-delimited


def transaction_hash(transaction: transactions.Transaction) -> bytes:
    """``hash_of(PostTransactionRequest(transaction=transaction))``, without making that
    request or its copy: the request's bytes are the transaction's behind the field's tag
    and length, and a transaction with no PIN and no dry-run flag hashes as it is. (Every
    posted transaction is hashed on the hot path; the two copies cost more than the hash.)
    """
    context = transaction.context
    if not transaction.HasField("context") or context.HasField("pin") or context.dry_run:
        return hash_of(transactions.PostTransactionRequest(transaction=transaction))
    body = transaction.SerializeToString(deterministic=True)
    return payload_digest(answers.length_delimited(_TRANSACTION_FIELD, body))


def submit(
    batcher: SubmissionBatcher,
    context: Context,
    request: Request,
    message_hash: bytes,
    wire_context: admission.Context,
) -> asyncio.Future[Answer]:
    submission = Submission(request, message_hash, wire_context.pin, wire_context.dry_run)
    return batcher.submit(submission, deadline_of(context))


def result_bytes_of(answer: Answer) -> bytes:
    """The contract's Result for an answer, as bytes, replayed or fresh."""
    if answer.response:
        return answers.replayed_bytes(answer.response) if answer.replayed else answer.response
    result = present(answer.result, "the result of a fresh answer")
    program = present(answer.program, "the program of a fresh answer")
    return answers.result_bytes(result, program, replayed=answer.replayed)


def result_message(answer: Answer) -> proto.common.Result:
    """The contract's Result for an answer, as a message (for the services that are not on
    the hot path)."""
    return proto.common.Result.FromString(result_bytes_of(answer))
