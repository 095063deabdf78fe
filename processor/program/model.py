"""The program file: one card definition and the programs it carries.

A card holds at most one tender program, any number of award programs and any
number of loyalty programs (the manual's "Programs" chapter). A program file
describes one card with its programs, series and store directory, at one
version; activating a new version never changes what an old one posted.
"""

from __future__ import annotations

from pydantic import Field

from processor.program.award import AwardProgram
from processor.program.base import Identifier, Model
from processor.program.cards import CardDefinition, CardSeries
from processor.program.loyalty import LoyaltyProgram
from processor.program.tender import TenderProgram

PROGRAMS_PER_CARD_MAX = 16


class ProgramFile(Model):
    """The root of a program file (YAML or JSON)."""

    id: Identifier
    version: int = Field(default=1, ge=1)
    name: str = Field(min_length=1)
    description: str = ""
    card: CardDefinition
    series: list[CardSeries] = Field(default_factory=list)
    locations: dict[str, dict[str, str]] = Field(default_factory=dict)
    tender: TenderProgram | None = None
    award_programs: list[AwardProgram] = Field(default_factory=list)
    loyalty_programs: list[LoyaltyProgram] = Field(default_factory=list)

    def program_ids(self) -> list[str]:
        ids = [] if self.tender is None else [self.tender.id]
        ids += [award.id for award in self.award_programs]
        ids += [loyalty.id for loyalty in self.loyalty_programs]
        return ids
