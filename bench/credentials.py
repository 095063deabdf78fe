"""The API key the load tools send with every call: ``LOYALTY_API_KEY``, else the demo's
Processor key (which ``loyalty serve --demo`` accepts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processor.tools.demo import DEMO_KEYS  # noqa: E402

API_KEY_ENV = "LOYALTY_API_KEY"


def api_key() -> str:
    return os.environ.get(API_KEY_ENV) or DEMO_KEYS["Processor"]


def metadata() -> tuple[tuple[str, str], ...]:
    """The metadata of every call: the key in ``x-api-key``."""
    return (("x-api-key", api_key()),)
