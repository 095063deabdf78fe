"""TransactionService: purchases, returns, voids and engagements, one or many at a time.

The hot RPCs answer with bytes: each Result is built as bytes once (and stored as such for
replays), and a response is those bytes under its field (wire.answers.response_bytes),
handed to gRPC by a handler whose response serializer passes bytes through; nothing is
parsed back into a message or serialized again. ``handler`` registers them so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from processor import proto
from processor.errors import InvalidFieldError, LoyaltyError
from processor.flow.pipeline import Answer, Submission, SubmissionBatcher
from processor.limits import TRANSACTIONS_PER_CALL_MAX
from processor.proto import transactions
from processor.service.handlers import Context
from processor.service.posting import deadline_of, result_bytes_of, submit, transaction_hash
from processor.wire import admission, answers

STREAM_IN_FLIGHT_MAX = 256
"""Requests of one stream waiting for their answers; reading stops beyond it (flow control)."""


class TransactionServicer(proto.transactions_grpc.TransactionServiceServicer):
    def __init__(self, batcher: SubmissionBatcher) -> None:
        self.batcher = batcher
        self.streams_open = 0  # for shutdown: streams end themselves once the batcher closes

    async def PostTransaction(
        self, request: transactions.PostTransactionRequest, context: Context
    ) -> bytes:
        future = self._submit(request.transaction, context)
        answer = await future
        return answers.response_bytes(result_bytes_of(answer))

    async def PostTransactions(
        self, request: transactions.PostTransactionsRequest, context: Context
    ) -> bytes:
        count = len(request.transactions)
        if not 1 <= count <= TRANSACTIONS_PER_CALL_MAX:
            raise InvalidFieldError(
                "transactions",
                f"{count} transactions; send 1 to {TRANSACTIONS_PER_CALL_MAX}",
                reason="TOO_MANY_TRANSACTIONS",
            )
        # Every transaction is checked before any is queued: a call that fails posts nothing.
        checked = []
        for index, transaction in enumerate(request.transactions):
            try:
                checked.append(
                    admission.transaction_from_proto(transaction, f"transactions[{index}]")
                )
            except LoyaltyError as error:
                error.metadata = {"index": str(index)}  # type: ignore[attr-defined]
                raise
        # One call is queued whole or refused whole, and posted whole or not at all.
        call = object()
        submissions = [
            Submission(
                engine_request,
                transaction_hash(transaction),
                wire_context.pin,
                wire_context.dry_run,
                call=call,
                index=index,
            )
            for index, (transaction, (wire_context, engine_request)) in enumerate(
                zip(request.transactions, checked, strict=True)
            )
        ]
        futures = self.batcher.submit_many(submissions, deadline_of(context))
        posted = await asyncio.gather(*futures)
        return b"".join(answers.response_bytes(result_bytes_of(answer)) for answer in posted)

    async def StreamTransactions(
        self,
        requests: AsyncIterator[transactions.StreamTransactionsRequest],
        context: Context,
    ) -> AsyncIterator[bytes]:
        waiting: asyncio.Queue[asyncio.Future[Answer] | None] = asyncio.Queue(
            maxsize=STREAM_IN_FLIGHT_MAX
        )

        async def read() -> None:
            # Cancelled means the answering side below is gone: it waits for no end marker,
            # and putting one into a full queue would never return.
            cancelled = False
            try:
                async for message in requests:
                    refused = False
                    try:
                        future = self._submit(message.transaction, context)
                    except Exception as error:
                        # The stream ends with this error, after the answers of everything
                        # before it; nothing after it is read.
                        future = asyncio.get_running_loop().create_future()
                        future.set_exception(error)
                        refused = True
                    try:
                        await waiting.put(future)
                    except asyncio.CancelledError:
                        future.cancel()  # its answer has nowhere to go now
                        raise
                    if refused:
                        break
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                if not cancelled:
                    await waiting.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        self.streams_open += 1
        try:
            while True:
                future = await waiting.get()
                if future is None:
                    break
                answer = await future
                yield answers.response_bytes(result_bytes_of(answer))
            await reader
        finally:
            self.streams_open -= 1
            reader.cancel()
            # Waited for, so that no reader outlives its call (it ends at once when cancelled).
            await asyncio.gather(reader, return_exceptions=True)
            _abandon(waiting)

    def _submit(
        self,
        transaction: transactions.Transaction,
        context: Context,
        field: str = "transaction",
    ) -> asyncio.Future[Answer]:
        wire_context, engine_request = admission.transaction_from_proto(transaction, field)
        return submit(
            self.batcher, context, engine_request, transaction_hash(transaction), wire_context
        )


def _abandon(waiting: asyncio.Queue[asyncio.Future[Answer] | None]) -> None:
    """Let go of the answers a stream that ended will never send: what is not evaluated yet
    is dropped (as for a cancelled unary call); what failed is marked seen."""
    while not waiting.empty():
        future = waiting.get_nowait()
        if future is None:
            continue
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _bytes_as_they_are(data: bytes) -> bytes:
    return data


def handler(servicer: TransactionServicer) -> grpc.GenericRpcHandler:
    """The service's methods for ``server.add_generic_rpc_handlers``: the generated
    registration, with responses passed through as the bytes the servicer built."""
    return grpc.method_handlers_generic_handler(
        "loyalty.v1.TransactionService",
        {
            "PostTransaction": grpc.unary_unary_rpc_method_handler(
                servicer.PostTransaction,
                request_deserializer=transactions.PostTransactionRequest.FromString,
                response_serializer=_bytes_as_they_are,
            ),
            "PostTransactions": grpc.unary_unary_rpc_method_handler(
                servicer.PostTransactions,
                request_deserializer=transactions.PostTransactionsRequest.FromString,
                response_serializer=_bytes_as_they_are,
            ),
            "StreamTransactions": grpc.stream_stream_rpc_method_handler(
                servicer.StreamTransactions,
                request_deserializer=transactions.StreamTransactionsRequest.FromString,
                response_serializer=_bytes_as_they_are,
            ),
        },
    )
