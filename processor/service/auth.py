"""Who is calling: API keys, OAuth 2.0 bearer tokens and client certificates.

Every call but health (and reflection, unless closed) proves who makes it, one of three ways:

- ``x-api-key: lk_<key_id>_<secret>``: a key made with ``loyalty keys create``, looked up in
  this process's copy of the live keys (:class:`KeyTable`, read again every
  ``auth_keys_refresh_seconds``, so a revocation reaches every process within that);
- ``authorization: Bearer <JWT>``: a token of the configured issuer and audience, signed by
  a key of its JWKS (a file, or an https URL), checked by PyJWT (:class:`TokenVerifier`);
  its ``roles`` claim gives the roles, an optional ``cards`` claim scopes it to cards;
- a client certificate (with ``tls_client_ca``, the TLS handshake has checked it): its
  common name is the principal and its organization (O) entries the roles, as Kubernetes
  reads client certificates.

A credential sent is the one used (a caller with a certificate may still present a key).
A call without any, or with one that does not prove anything, is refused UNAUTHENTICATED
with reason API_AUTHENTICATION_FAILED (code 1042), saying which way failed and why but never
echoing the credential. Roles are then checked against :mod:`processor.service.roles`:
PERMISSION_DENIED with reason ROLE_NOT_PERMITTED, or CARD_NOT_PERMITTED for a card-scoped
caller's request on another card.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID

from processor.errors import (
    AuthenticationError,
    InputFileError,
    InvalidFieldError,
    PermissionDeniedError,
    Problem,
)
from processor.limits import (
    CERTIFICATES_HELD_MAX,
    CREDENTIAL_HEADER_CHARS_MAX,
    JWKS_BYTES_MAX,
    JWKS_MISS_SECONDS,
    JWKS_READ_SECONDS,
    JWKS_REFRESH_SECONDS,
    KEYS_MISS_READ_GAP_SECONDS,
    VERIFIED_TOKENS_MAX,
)
from processor.service import roles
from processor.store import notifications
from processor.store.credentials import KEY_PATTERN, Credentials, KeyRecord, secret_hash
from processor.store.credentials import check_cards as check_card_scope
from processor.store.notifications import Waiter

log = logging.getLogger(__name__)

AUTH_REASON: Final = "API_AUTHENTICATION_FAILED"
API_KEY_HEADER: Final = "x-api-key"
AUTHORIZATION_HEADER: Final = "authorization"
TOKEN_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
"""Signatures a token may carry: public-key ones only, so a JWKS can never be mistaken for
a shared secret (the "alg confusion" of HS256 against a public key)."""
SIGNING_KEY_TYPES: Final = frozenset({"RSA", "EC", "OKP"})
"""The JWKS entries kept: public keys. A symmetric ("oct") entry is left out, so no token
can be checked as an HMAC whatever its header says."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a call: a name for logs and the audit log, how it proved it, its roles and,
    for a card-scoped caller, its cards (None: any card)."""

    name: str
    method: str  # api_key, token, certificate
    roles: frozenset[str]
    cards: frozenset[str] | None = None


ANONYMOUS: Final = Principal("anonymous", "none", frozenset())

principal_var: ContextVar[Principal] = ContextVar("principal", default=ANONYMOUS)
"""The principal of the call being served (ANONYMOUS on an open method)."""


def refused(why: str) -> AuthenticationError:
    return AuthenticationError(f"the caller is not authenticated: {why}", reason=AUTH_REASON)


# --------------------------------------------------------------------------- API keys


class KeyTable:
    """This process's copy of the live API keys, by key id, read again periodically.

    A key id not in the copy reads the table again (a key made a moment ago, here or on
    another host) unless a read began after the call did; callers that miss at once share
    one read, so made-up keys cost at most one query in flight, never one each.
    """

    def __init__(self, credentials: Credentials, *, demo_allowed: bool) -> None:
        self._credentials = credentials
        self._demo_allowed = demo_allowed
        self._keys: dict[str, KeyRecord] = {}
        self._principals: dict[str, Principal] = {}  # by the key presented, for live keys
        self._read_began = float("-inf")
        self._miss_read_began = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Read the live keys again; a read that began before the one last applied is
        dropped (the refresher and a miss may read at once)."""
        began = time.monotonic()
        keys = await self._credentials.keys(include_revoked=False)
        if began < self._read_began:
            return
        self._keys = {key.key_id: key for key in keys if self._demo_allowed or not key.demo}
        self._principals = {}
        self._read_began = began

    async def run_refresher(self, interval_seconds: float, changed: Waiter | None = None) -> None:
        """Read the keys until cancelled: when ``changed`` is told a key was added or
        revoked, or every ``interval_seconds`` while it cannot be
        (processor.store.notifications); a failed read keeps the copy as it is (the
        database may be briefly away), logged, and is tried again ``interval_seconds``
        later, not at the next change told (a revocation told must not wait for another)."""
        failed = False
        while True:
            await notifications.sleep(None if failed else changed, interval_seconds)
            try:
                await self.refresh()
                failed = False
            except Exception as error:  # the next round tries again
                failed = True
                log.warning("API keys not read again: %s", error)

    async def principal(self, presented: str) -> Principal:
        known = self._principals.get(presented)
        if known is not None:
            return known
        match = KEY_PATTERN.fullmatch(presented)
        if match is None:
            raise refused("the x-api-key header is not an API key (lk_<id>_<secret>)")
        key_id, secret = match.groups()
        record = self._keys.get(key_id)
        if record is None:
            await self._read_since(time.monotonic())
            record = self._keys.get(key_id)
        if record is None or not hmac.compare_digest(secret_hash(secret), record.secret_hash):
            raise refused(f"API key {key_id} is unknown, revoked or wrong")
        principal = Principal(
            f"key:{record.key_id}",
            "api_key",
            frozenset(record.roles),
            None if record.cards is None else frozenset(record.cards),
        )
        self._principals[presented] = principal
        return principal

    async def _read_since(self, asked: float) -> None:
        """A read of the keys that began at ``asked`` or later, shared by every caller, and
        at most one every KEYS_MISS_READ_GAP_SECONDS (a caller waits for the next)."""
        while self._read_began < asked:
            if self._reading is None or self._reading.done():
                wait = self._miss_read_began + KEYS_MISS_READ_GAP_SECONDS - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # another caller may have started the read meanwhile
                self._miss_read_began = time.monotonic()
                self._reading = asyncio.get_running_loop().create_task(self.refresh())
            try:
                await asyncio.shield(self._reading)
            except Exception as error:
                raise refused("the API keys cannot be read now; retry") from error


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """What a token must be: its issuer, audience and signing keys (a JWKS file or URL),
    the clock skew allowed, and the claims that carry roles and cards."""

    issuer: str
    audience: str
    jwks: str
    leeway_seconds: float
    roles_claim: str = "roles"
    cards_claim: str = "cards"


class TokenVerifier:
    """Checks bearer tokens against one issuer's JWKS; remembers the ones it verified until
    they expire (a caller sends the same token on every call) or the key set changes."""

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._read_at = time.monotonic()
        self._reading: asyncio.Task[None] | None = None
        self._keys = self._read_keys()  # refused at start, naming the setting

    def _read_keys(self) -> dict[str, jwt.PyJWK]:
        source = self.settings.jwks
        setting = "auth_token_jwks (LOYALTY_AUTH_TOKEN_JWKS)"
        try:
            if "://" in source:
                if not _trusted_url(source):
                    raise ValueError("a JWKS URL must be https (http only on loopback)")
                with urllib.request.urlopen(source, timeout=JWKS_READ_SECONDS) as answer:
                    text = answer.read(JWKS_BYTES_MAX + 1)
            else:
                with Path(source).open("rb") as file:
                    text = file.read(JWKS_BYTES_MAX + 1)
            if len(text) > JWKS_BYTES_MAX:
                raise ValueError(f"is over {JWKS_BYTES_MAX} bytes")
            keys = jwt.PyJWKSet.from_dict(json.loads(text)).keys
        except (OSError, ValueError, jwt.PyJWTError) as error:
            raise InputFileError(
                "settings", [Problem(setting, f"{source}: not a JWKS that can be used: {error}")]
            ) from error
        return {key.key_id or "": key for key in keys if key.key_type in SIGNING_KEY_TYPES}

    async def refresh(self) -> None:
        """Read the JWKS again, off the event loop, one read at a time; every token is
        verified again after it (a key the issuer withdrew is trusted no longer)."""
        if self._reading is None or self._reading.done():
            self._read_at = time.monotonic()
            self._reading = asyncio.get_running_loop().create_task(self._apply_read())
        await asyncio.shield(self._reading)

    async def _apply_read(self) -> None:
        try:
            keys = await asyncio.to_thread(self._read_keys)
        except InputFileError as error:  # keep the keys held; tried again later
            log.warning("JWKS not read again: %s", error)
            return
        self._verified = {}  # every token verified again, against the keys as they are now
        self._keys = keys

    async def run_refresher(self, interval_seconds: float = JWKS_REFRESH_SECONDS) -> None:
        """Read the JWKS every ``interval_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            await self.refresh()

    async def principal(self, token: str) -> Principal:
        now = time.time()
        known = self._verified.get(token)
        if known is not None and known[1] > now:
            return known[0]
        claims = await self._verify(token)
        principal = self._principal_of(claims)
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            self._verified = {}
        self._verified[token] = (principal, float(claims["exp"]) + self.settings.leeway_seconds)
        return principal

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise refused(f"the bearer token is not a JWT: {error}") from error
        kid = header.get("kid") or ""
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._read_at >= JWKS_MISS_SECONDS:
            await self.refresh()  # a rotated key: read the JWKS again
            key = self._keys.get(kid)
        if key is None:
            raise refused(f"the token's key {kid!r} is not one of the issuer's")
        settings = self.settings
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(TOKEN_ALGORITHMS),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise refused(f"the token is not accepted: {error}") from error

    def _principal_of(self, claims: Mapping[str, Any]) -> Principal:
        granted = claims.get(self.settings.roles_claim, [])
        if isinstance(granted, str):
            granted = granted.split()
        if not isinstance(granted, list) or not all(isinstance(role, str) for role in granted):
            raise refused(f"the token's {self.settings.roles_claim} claim is not a list of roles")
        cards = claims.get(self.settings.cards_claim)
        if cards is not None:
            try:
                check_card_scope(cards if isinstance(cards, list) else [], "cards")
            except InvalidFieldError as error:
                raise refused(f"the token's {self.settings.cards_claim} claim: {error}") from error
        return Principal(
            f"token:{claims['sub']}",
            "token",
            frozenset(granted) & frozenset(roles.ROLES),
            None if cards is None else frozenset(cards),
        )


# --------------------------------------------------------------------------- certificates


class CertificateIdentities:
    """The principal of a client certificate the TLS handshake verified: CN and O."""

    def __init__(self) -> None:
        self._known: dict[bytes, Principal] = {}

    def principal(self, pem: bytes) -> Principal:
        known = self._known.get(pem)
        if known is not None:
            return known
        try:
            subject = x509.load_pem_x509_certificate(pem).subject
        except ValueError as error:
            raise refused("the client certificate cannot be read") from error
        names = [str(one.value) for one in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not names:
            raise refused("the client certificate has no common name (CN)")
        granted = {
            str(one.value) for one in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        }
        principal = Principal(
            f"certificate:{names[0]}", "certificate", frozenset(granted) & frozenset(roles.ROLES)
        )
        if len(self._known) >= CERTIFICATES_HELD_MAX:
            self._known.clear()
        self._known[pem] = principal
        return principal


# --------------------------------------------------------------------------- the authority


class Authority:
    """Authenticates each call and checks its roles; one per server."""

    def __init__(
        self,
        keys: KeyTable,
        tokens: TokenVerifier | None = None,
        *,
        reflection_open: bool = True,
    ) -> None:
        self.keys = keys
        self.tokens = tokens
        self.certificates = CertificateIdentities()
        self.reflection_open = reflection_open

    def is_open(self, full_method: str) -> bool:
        return roles.is_open(full_method, reflection_open=self.reflection_open)

    async def authenticate(self, context: Any) -> Principal:
        """The caller's principal, from the credential it sent or its certificate."""
        api_key = bearer = None
        for key, value in context.invocation_metadata() or ():
            if key == API_KEY_HEADER:
                api_key = value
            elif key == AUTHORIZATION_HEADER:
                bearer = value
        for header, value in ((API_KEY_HEADER, api_key), (AUTHORIZATION_HEADER, bearer)):
            if value is not None and (
                not isinstance(value, str) or len(value) > CREDENTIAL_HEADER_CHARS_MAX
            ):
                raise refused(f"the {header} header is not a credential")
        if api_key is not None:
            return await self.keys.principal(api_key.strip())
        if bearer is not None:
            scheme, _, token = bearer.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise refused("the authorization header is not 'Bearer <token>'")
            token = token.strip()
            if token.startswith("lk_"):  # a key sent as a bearer token (buf curl, Prometheus)
                return await self.keys.principal(token)
            if self.tokens is None:
                raise refused("bearer tokens are not configured on this server (auth_token_*)")
            return await self.tokens.principal(token)
        pem = _client_certificate(context)
        if pem is not None:
            return self.certificates.principal(pem)
        raise refused(
            "no credential: send an API key in x-api-key or a token in authorization: Bearer"
        )

    def authorize(self, principal: Principal, full_method: str) -> None:
        """PERMISSION_DENIED unless one of the principal's roles may call the method, and a
        card-scoped principal only where the request names its cards."""
        if roles.needs_no_role(full_method):
            return
        allowed = roles.allowed(full_method)
        if allowed is None or principal.roles.isdisjoint(allowed):
            raise PermissionDeniedError(
                f"{principal.name} (roles: {', '.join(sorted(principal.roles)) or 'none'}) may"
                f" not call {roles.rpc_name(full_method)}; it needs one of:"
                f" {', '.join(sorted(allowed or ())) or 'no role may'}",
                reason="ROLE_NOT_PERMITTED",
            )
        if principal.cards is not None and not roles.acts_on_cards(full_method):
            raise PermissionDeniedError(
                f"{principal.name} may act only on its own cards, and"
                f" {roles.rpc_name(full_method)} does not act on a card",
                reason="CARD_NOT_PERMITTED",
            )


def _trusted_url(url: str) -> bool:
    """https, or http to this host (a sidecar): a JWKS read in the clear from elsewhere could
    be anyone's keys."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        return True
    return parsed.scheme == "http" and (parsed.hostname or "") in {"127.0.0.1", "::1", "localhost"}


def check_cards(principal: Principal, request: Any) -> None:
    """CARD_NOT_PERMITTED unless every card the request names is the principal's."""
    if principal.cards is None:
        return
    for card in roles.cards_of(request):
        if card not in principal.cards:
            raise PermissionDeniedError(
                f"{principal.name} may act only on its own cards", reason="CARD_NOT_PERMITTED"
            )


def _client_certificate(context: Any) -> bytes | None:
    try:
        values: Iterable[bytes] = context.auth_context().get("x509_pem_cert", ())
    except (AttributeError, ValueError):
        return None
    for value in values:
        return bytes(value)
    return None


__all__ = [
    "ANONYMOUS",
    "API_KEY_HEADER",
    "AUTHORIZATION_HEADER",
    "AUTH_REASON",
    "Authority",
    "KeyTable",
    "Principal",
    "TokenSettings",
    "TokenVerifier",
    "check_cards",
    "principal_var",
]
