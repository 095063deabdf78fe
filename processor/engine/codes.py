"""Deterministic award codes.

The engine is a pure function, so the codes of the coupons and certificates it
issues are derived from what caused them (program, request id, rule, ordinal)
rather than drawn at random: replaying a request yields the same codes, and the
two engine implementations agree code for code.
"""

from __future__ import annotations

import base64
import hashlib

CODE_BODY_LENGTH = 12


def award_code(prefix: str, *parts: object) -> str:
    """``prefix`` followed by 12 base32 characters of a BLAKE2b digest of ``parts``."""
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode(), digest_size=10)
    body = base64.b32encode(digest.digest()).decode("ascii")[:CODE_BODY_LENGTH]
    return f"{prefix}{body}"
