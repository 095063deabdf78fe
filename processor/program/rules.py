"""Time and location rules, shared by issue rules and award certificates.

A time rule says when something applies (a bonus period, an eligibility
period) or does not (a blackout period): days of the week, a daily time
window and a date range, all of which must hold. A location rule names stores,
or store attributes looked up in the program's location directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from processor import calendar
from processor.errors import Problem
from processor.program.base import WEEKDAYS, Day, Identifier, Model, TimeOfDay, Weekday

LocationDirectory = Mapping[str, Mapping[str, str]]
"""Store id -> attribute name -> value (the program file's ``locations``)."""


class TimeWindow(Model):
    """Days of the week, a time window and a date range; a moment matches when all hold.

    An end time earlier than the start time spans midnight (22:00 to 02:00).
    """

    weekdays: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))
    start_time: TimeOfDay = 0
    end_time: TimeOfDay = 86400
    start_date: Day | None = None
    end_date: Day | None = None

    def matches(self, day: int, second: int) -> bool:
        if self.start_date is not None and day < self.start_date:
            return False
        if self.end_date is not None and day > self.end_date:
            return False
        if WEEKDAYS[calendar.weekday(day)] not in self.weekdays:
            return False
        if self.start_time <= self.end_time:
            return self.start_time <= second < self.end_time
        return second >= self.start_time or second < self.end_time

    def problems(self, path: str) -> list[Problem]:
        found = []
        if not self.weekdays:
            found.append(Problem(f"{path}.weekdays", "must name at least one day"))
        if len(set(self.weekdays)) != len(self.weekdays):
            found.append(Problem(f"{path}.weekdays", "names a day twice"))
        if self.start_time == self.end_time:
            found.append(Problem(f"{path}.end_time", "equals start_time: the window is empty"))
        if (
            self.start_date is not None
            and self.end_date is not None
            and self.end_date < self.start_date
        ):
            found.append(Problem(f"{path}.end_date", "is before start_date"))
        return found


class AttributeCondition(Model):
    """A store attribute and the values that satisfy it."""

    name: Identifier
    values: list[str] = Field(min_length=1)


class LocationRule(Model):
    """Stores named one by one, or by attributes joined with ``any`` (or) / ``all`` (and)."""

    locations: list[str] = Field(default_factory=list)
    attributes: list[AttributeCondition] = Field(default_factory=list)
    match: Literal["any", "all"] = "any"

    def matches(self, location: str, directory: LocationDirectory) -> bool:
        if location in self.locations:
            return True
        if not self.attributes:
            return False
        found = directory.get(location, {})
        tests = (found.get(condition.name) in condition.values for condition in self.attributes)
        return all(tests) if self.match == "all" else any(tests)

    def problems(self, path: str, directory: LocationDirectory) -> list[Problem]:
        found = []
        if not self.locations and not self.attributes:
            found.append(Problem(path, "names no locations and no attributes"))
        for index, location in enumerate(self.locations):
            if directory and location not in directory:
                found.append(
                    Problem(f"{path}.locations[{index}]", f"unknown location {location!r}")
                )
        return found


def location_allowed(
    location: str,
    include: LocationRule | None,
    exclude: LocationRule | None,
    directory: LocationDirectory,
) -> bool:
    """Whether a store passes an include rule (if any) and is not excluded."""
    if include is not None and not include.matches(location, directory):
        return False
    return not (exclude is not None and exclude.matches(location, directory))
