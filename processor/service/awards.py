"""AwardService: a card's coupons, certificates and e-award value, and their redemption."""

from __future__ import annotations

import datetime

from processor import calendar, proto
from processor.errors import InvalidFieldError, NotFoundError, RedemptionError, mask_card
from processor.flow.pipeline import Pipeline, SubmissionBatcher
from processor.limits import CARD_DIGITS_MAX
from processor.proto import awards, common
from processor.service.handlers import Context
from processor.service.posting import hash_of, result_message, submit
from processor.wire import admission, answers


class AwardServicer(proto.awards_grpc.AwardServiceServicer):
    def __init__(self, batcher: SubmissionBatcher, pipeline: Pipeline) -> None:
        self.batcher = batcher
        self.pipeline = pipeline

    async def ListAwards(
        self, request: awards.ListAwardsRequest, context: Context
    ) -> awards.ListAwardsResponse:
        account = request.account
        if not account.isdigit() or len(account) > CARD_DIGITS_MAX:
            raise InvalidFieldError("account", f"a card number is 1 to {CARD_DIGITS_MAX} digits")
        program = self.pipeline.programs.for_card(account)
        records = await self.pipeline.cards.cards([account])
        if account not in records:
            raise NotFoundError(f"no card {mask_card(account)}", reason="UNKNOWN_CARD")
        states = await self.pipeline.load_states([account], fresh=False)
        _, state = states[account]
        today = calendar.to_day(datetime.date.today())
        return answers.awards_to_proto(state, program, today, request)

    async def RedeemAward(
        self, request: awards.RedeemAwardRequest, context: Context
    ) -> awards.RedeemAwardResponse:
        wire_context, engine_request = admission.award_redemption_from_proto(request)
        future = submit(self.batcher, context, engine_request, hash_of(request), wire_context)
        result = result_message(await future)
        return awards.RedeemAwardResponse(result=result, code=_redemption_code(result))

    async def RedeemAwardValue(
        self, request: awards.RedeemAwardValueRequest, context: Context
    ) -> awards.RedeemAwardValueResponse:
        wire_context, engine_request = admission.award_redemption_from_proto(request)
        admission.check_award_currency(
            request, self.pipeline.programs.for_card(engine_request.account)
        )
        future = submit(self.batcher, context, engine_request, hash_of(request), wire_context)
        result = result_message(await future)
        return awards.RedeemAwardValueResponse(result=result, code=_redemption_code(result))


def _redemption_code(result: common.Result) -> int:
    """The manual's code of a redemption's answer: 2003 (Reward Redemption Failure) when it
    was declined, whatever the reason; 0 when approved."""
    return RedemptionError.code if result.status == common.RESULT_STATUS_DECLINED else 0
