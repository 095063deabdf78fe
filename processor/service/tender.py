"""TenderService: the stored-value operations of a card's tender program."""

from __future__ import annotations

from typing import Any

import grpc

from processor import proto
from processor.flow.batcher import Batcher
from processor.service.posting import hash_of, result_message, submit
from processor.wire import admission


class TenderServicer(proto.tender_grpc.TenderServiceServicer):
    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher

    async def _post(
        self, op: str, request: Any, response_type: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        wire_context, engine_request = admission.tender_from_proto(op, request)
        future = submit(self.batcher, context, engine_request, hash_of(request), wire_context)
        return response_type(result=result_message(await future))

    async def Activate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("activate", request, proto.tender.ActivateResponse, context)

    async def Reload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("reload", request, proto.tender.ReloadResponse, context)

    async def GetBalance(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("balance", request, proto.tender.GetBalanceResponse, context)

    async def Redeem(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("redeem", request, proto.tender.RedeemResponse, context)

    async def PreAuthorize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("preauth", request, proto.tender.PreAuthorizeResponse, context)

    async def Capture(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("capture", request, proto.tender.CaptureResponse, context)

    async def Release(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("release", request, proto.tender.ReleaseResponse, context)

    async def CashOut(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("cash_out", request, proto.tender.CashOutResponse, context)

    async def Merge(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._post("merge", request, proto.tender.MergeResponse, context)
