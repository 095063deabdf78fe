"""Senders other packages add: entry points of the group ``loyalty.event_senders``.

A package that delivers events somewhere else (a message broker, a CRM) declares, in its
own packaging metadata::

    [project.entry-points."loyalty.event_senders"]
    kafka = "mypackage.events:make_sender"

where ``make_sender()`` returns an object with ``name`` (the entry point's name: it keys
the sender's place in ``event_deliveries``) and ``async send(rows)`` (processor.outbox.
senders.Sender: deliver a page of events, or raise DeliveryError). The setting
``events_senders`` ("kafka", or several names separated by commas) turns them on; the
delivery loop gives each its events at least once, in order, as it does the built-in ones.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Final

GROUP: Final = "loyalty.event_senders"
"""The entry-point group senders are registered under."""

BUILT_IN: Final = frozenset({"webhook", "log", "tasks"})
"""Senders the processor has itself: no plugin may take their names."""


def names_of(setting: str) -> list[str]:
    """The plugin names a setting lists; ValueError naming any not installed (or built in)."""
    names = [name.strip() for name in setting.split(",") if name.strip()]
    installed = {point.name for point in entry_points(group=GROUP)}
    for name in names:
        if name in BUILT_IN:
            raise ValueError(f"{name!r} is a built-in sender, not a plugin")
        if name not in installed:
            listed = ", ".join(sorted(installed)) or "none"
            raise ValueError(f"no sender {name!r} is installed (installed: {listed})")
    if len(set(names)) != len(names):
        raise ValueError("names a sender more than once")
    return names


def load(setting: str) -> list[Any]:
    """The senders a setting lists, made by their factories; ValueError if one does not
    make a sender of its own name."""
    points = {point.name: point for point in entry_points(group=GROUP)}
    senders = []
    for name in names_of(setting):
        try:
            sender = points[name].load()()
        except Exception as error:  # a package that does not import, a factory that fails
            raise ValueError(
                f"the {name!r} entry point failed to make its sender: {error!r}"
            ) from None
        if getattr(sender, "name", None) != name or not callable(getattr(sender, "send", None)):
            raise ValueError(
                f"the {name!r} entry point did not make a sender named {name!r} with send()"
            )
        senders.append(sender)
    return senders
