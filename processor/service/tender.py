"""TenderService: the stored-value operations of a card's tender program."""

from __future__ import annotations

from typing import TypeVar

from processor import proto
from processor.flow.pipeline import SubmissionBatcher
from processor.proto import tender
from processor.service.handlers import Context
from processor.service.posting import hash_of, result_message, submit
from processor.wire import admission

ResponseT = TypeVar(
    "ResponseT",
    tender.ActivateResponse,
    tender.ReloadResponse,
    tender.GetBalanceResponse,
    tender.RedeemResponse,
    tender.PreAuthorizeResponse,
    tender.CaptureResponse,
    tender.ReleaseResponse,
    tender.CashOutResponse,
    tender.MergeResponse,
)


class TenderServicer(proto.tender_grpc.TenderServiceServicer):
    def __init__(self, batcher: SubmissionBatcher) -> None:
        self.batcher = batcher

    async def _post(
        self,
        op: str,
        request: admission.TenderMessage,
        response_type: type[ResponseT],
        context: Context,
    ) -> ResponseT:
        wire_context, engine_request = admission.tender_from_proto(op, request)
        future = submit(self.batcher, context, engine_request, hash_of(request), wire_context)
        return response_type(result=result_message(await future))

    async def Activate(
        self, request: tender.ActivateRequest, context: Context
    ) -> tender.ActivateResponse:
        return await self._post("activate", request, tender.ActivateResponse, context)

    async def Reload(
        self, request: tender.ReloadRequest, context: Context
    ) -> tender.ReloadResponse:
        return await self._post("reload", request, tender.ReloadResponse, context)

    async def GetBalance(
        self, request: tender.GetBalanceRequest, context: Context
    ) -> tender.GetBalanceResponse:
        return await self._post("balance", request, tender.GetBalanceResponse, context)

    async def Redeem(
        self, request: tender.RedeemRequest, context: Context
    ) -> tender.RedeemResponse:
        return await self._post("redeem", request, tender.RedeemResponse, context)

    async def PreAuthorize(
        self, request: tender.PreAuthorizeRequest, context: Context
    ) -> tender.PreAuthorizeResponse:
        return await self._post("preauth", request, tender.PreAuthorizeResponse, context)

    async def Capture(
        self, request: tender.CaptureRequest, context: Context
    ) -> tender.CaptureResponse:
        return await self._post("capture", request, tender.CaptureResponse, context)

    async def Release(
        self, request: tender.ReleaseRequest, context: Context
    ) -> tender.ReleaseResponse:
        return await self._post("release", request, tender.ReleaseResponse, context)

    async def CashOut(
        self, request: tender.CashOutRequest, context: Context
    ) -> tender.CashOutResponse:
        return await self._post("cash_out", request, tender.CashOutResponse, context)

    async def Merge(self, request: tender.MergeRequest, context: Context) -> tender.MergeResponse:
        return await self._post("merge", request, tender.MergeResponse, context)
