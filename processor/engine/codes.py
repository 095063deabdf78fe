"""Deterministic award codes.

The engine is a pure function, so the codes of the coupons and certificates it
issues are derived from what caused them (program, card, request id, rule, ordinal:
request ids are unique per card, not across cards)
rather than drawn at random: replaying a request yields the same codes, and the
two engine implementations agree code for code.
"""

from __future__ import annotations

import hashlib

CODE_BODY_BYTES = 8
"""64 bits of digest: 16 hexadecimal characters after the prefix."""


def award_code(prefix: str, *parts: object) -> str:
    """``prefix`` followed by 16 upper-case hex digits of a BLAKE2b digest of ``parts``.

    Hex rather than base32: the standard library's base32 encoder is written in
    Python and cost more than the rest of a purchase's evaluation.
    """
    text = "\x1f".join([str(part) for part in parts])
    digest = hashlib.blake2b(text.encode(), digest_size=CODE_BODY_BYTES)
    return prefix + digest.hexdigest().upper()
