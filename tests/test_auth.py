"""Who may call what: API keys, bearer tokens and client certificates authenticated, each
role held to its row of processor.service.roles, card-scoped callers to their own cards."""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import ipaddress
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from plugins.server import Served, StartServed, purchase, transaction

from processor import proto
from processor.errors import InputFileError
from processor.runtime.settings import Settings
from processor.service import roles
from processor.service.auth import CertificateIdentities
from processor.service.errors import error_info_of
from processor.service.server import check_ports, token_settings
from processor.store.credentials import Credentials
from processor.tools.demo import DEMO_KEYS, demo_keys

admin = proto.admin
transactions = proto.transactions
ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://issuer.test"
AUDIENCE = "loyalty-processor"


# --------------------------------------------------------------------------- helpers


async def make_key(served: Served, *held: str, cards: list[str] | None = None) -> str:
    _, key = await Credentials(served.store).create_key("test", list(held), cards=cards)
    return key


def with_key(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def stubs(served: Served) -> dict[str, Any]:
    channel = served.channel
    return {
        "TransactionService": proto.transactions_grpc.TransactionServiceStub(channel),
        "TenderService": proto.tender_grpc.TenderServiceStub(channel),
        "AwardService": proto.awards_grpc.AwardServiceStub(channel),
        "AdminService": proto.admin_grpc.AdminServiceStub(channel),
    }


def _services() -> list[Any]:
    return [
        service for module in proto.FILES for service in module.DESCRIPTOR.services_by_name.values()
    ]


def _request_class(full_method: str) -> Any:
    service, method = full_method.strip("/").split("/")
    (found,) = [one for one in _services() if one.full_name == service]
    return message_factory.GetMessageClass(found.methods_by_name[method].input_type)


async def call(served: Served, full_method: str, metadata: Any, request: Any = None) -> Any:
    """Call ``full_method`` with ``request`` (an empty one when None); the status code and
    the ErrorInfo of its failure, or (OK, None)."""
    service, method = full_method.strip("/").split("/")
    stub = getattr(stubs(served)[service.rsplit(".", 1)[-1]], method)
    if request is None and method == "WatchEvents":
        # A watch goes on until cancelled; a kind it does not know ends it, once let through.
        request = proto.admin.WatchEventsRequest(kinds=[proto.admin.EVENT_KIND_UNSPECIFIED])
    request = request if request is not None else _request_class(full_method)()
    try:
        if method == "WatchEvents":
            async for _ in stub(request, metadata=metadata, timeout=30):
                pass
        elif method == "StreamTransactions":

            async def messages() -> AsyncIterator[Any]:
                yield request

            responses = stub(messages(), metadata=metadata, timeout=30)
            async for _ in responses:
                pass
        else:
            await stub(request, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code(), error_info_of(error)
    return grpc.StatusCode.OK, None


POST = "/loyalty.v1.TransactionService/PostTransaction"


async def post(served: Served, metadata: Any, card: str, request_id: str) -> Any:
    """A purchase posted with ``metadata``: what :func:`call` answers."""
    return await call(served, POST, metadata, purchase(card, request_id))


def assert_refused(outcome: Any, code: grpc.StatusCode, reason: str) -> None:
    status, info = outcome
    assert status == code, outcome
    assert info is not None and info.reason == reason, outcome


# --------------------------------------------------------------------------- roles


async def test_every_role_calls_exactly_the_rpcs_of_its_row(served: Served) -> None:
    keys = {role: await make_key(served, role) for role in roles.ROLES}
    # Every RPC the server serves has a row: none is open by omission.
    served_methods = {
        f"/{service.full_name}/{method.name}"
        for service in _services()
        for method in service.methods
    }
    assert served_methods == set(roles.ALLOWED)
    for full_method, allowed in roles.ALLOWED.items():
        for role, key in keys.items():
            status, info = await call(served, full_method, with_key(key))
            denied = status == grpc.StatusCode.PERMISSION_DENIED and (
                info is not None and info.reason == "ROLE_NOT_PERMITTED"
            )
            assert denied == (role not in allowed), (full_method, role, status, info)
            assert status != grpc.StatusCode.UNAUTHENTICATED, (full_method, role)


async def test_pins_of_generated_cards_go_to_an_admin_only(served: Served) -> None:
    manager = await make_key(served, roles.MANAGER, roles.SUPPORT, roles.VIEWER)
    request = admin.GenerateCardsRequest(program_id="northwind", series_id="S1", count=1)
    outcome = await call(
        served, "/loyalty.v1.AdminService/GenerateCards", with_key(manager), request
    )
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")


# --------------------------------------------------------------------------- API keys


async def test_a_call_without_credentials_is_refused_1042_and_health_stays_open(
    served: Served, cards: list[str]
) -> None:
    outcome = await post(served, (), cards[5], "n-1")
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")
    assert outcome[1].metadata["code"] == "1042"
    health = health_pb2_grpc.HealthStub(served.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)

    async def ask() -> AsyncIterator[Any]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    listed = [answer async for answer in reflection.ServerReflectionInfo(ask(), timeout=10)]
    assert listed[0].list_services_response.service


async def test_reflection_closed_by_the_setting_needs_a_credential(
    start_served: StartServed,
) -> None:
    served = await start_served(auth_reflection_open=False)
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)

    async def ask() -> AsyncIterator[Any]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [answer async for answer in reflection.ServerReflectionInfo(ask(), timeout=10)]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    viewer = await make_key(served, roles.VIEWER)  # any role may use it
    listed = [
        answer
        async for answer in reflection.ServerReflectionInfo(
            ask(), timeout=10, metadata=with_key(viewer)
        )
    ]
    assert listed[0].list_services_response.service


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((("x-api-key", "not a key"),), id="not-a-key"),
        pytest.param((("x-api-key", "lk_000000000000_" + "A" * 43),), id="unknown-id"),
        pytest.param((("authorization", "Basic dXNlcjpwYXNz"),), id="not-bearer"),
        pytest.param((("authorization", "Bearer "),), id="empty-bearer"),
        pytest.param((("authorization", "Bearer not.a.jwt"),), id="not-a-jwt"),
        pytest.param((("x-api-key", "lk_" + "a" * 5000),), id="too-long"),
    ],
)
async def test_a_credential_that_proves_nothing_is_refused_without_echoing_it(
    served: Served, cards: list[str], metadata: Any
) -> None:
    outcome = await post(served, metadata, cards[5], "x")
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")
    assert metadata[0][1][-20:] not in str(outcome[1])


async def test_a_wrong_secret_is_refused_and_a_revoked_key_stops_working(
    start_served: StartServed, cards: list[str]
) -> None:
    served = await start_served(auth_keys_refresh_seconds=0.05)
    key = await make_key(served, roles.PROCESSOR)
    assert (await post(served, with_key(key), cards[6], "k-1"))[0] == (grpc.StatusCode.OK)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    outcome = await post(served, with_key(wrong), cards[6], "k-2")
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")
    key_id = key.split("_")[1]
    assert await Credentials(served.store).revoke_key(key_id)
    assert not await Credentials(served.store).revoke_key(key_id)  # once
    for attempt in range(200):  # the refresher reads the keys again every 0.05 s
        outcome = await post(served, with_key(key), cards[6], f"k-r{attempt}")
        if outcome[0] != grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.05)
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")


async def test_a_key_sent_as_a_bearer_token_is_accepted(served: Served, cards: list[str]) -> None:
    key = await make_key(served, roles.PROCESSOR)
    outcome = await post(served, bearer(key), cards[7], "b-1")
    assert outcome == (grpc.StatusCode.OK, None)


async def test_the_demo_keys_are_refused_outside_the_demo(
    start_served: StartServed, cards: list[str]
) -> None:
    real = await start_served()
    await demo_keys(Credentials(real.store))
    processor_key = with_key(DEMO_KEYS[roles.PROCESSOR])
    outcome = await post(real, processor_key, cards[8], "d-1")
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")
    demo = await start_served(demo=True)
    outcome = await post(demo, processor_key, cards[8], "d-2")
    assert outcome == (grpc.StatusCode.OK, None)


async def test_a_key_is_made_with_a_name_and_known_roles_only(served: Served) -> None:
    credentials = Credentials(served.store)
    for name in ("", "x" * 65, "tab\there"):
        with pytest.raises(Exception, match="name"):
            await credentials.create_key(name, [roles.VIEWER])
    with pytest.raises(Exception, match="cards"):
        await credentials.create_key("scoped", [roles.VIEWER], cards=[])
    before = len(await credentials.keys())
    assert len(await credentials.keys()) == before


# --------------------------------------------------------------------------- card scope


async def test_a_card_scoped_key_acts_only_on_its_own_cards(
    served: Served, cards: list[str]
) -> None:
    own, other = cards[9], cards[10]
    key = with_key(await make_key(served, roles.PROCESSOR, roles.VIEWER, cards=[own]))
    assert (await post(served, key, own, "c-1"))[0] == grpc.StatusCode.OK
    outcome = await post(served, key, other, "c-2")
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    many = transactions.PostTransactionsRequest(
        transactions=[transaction(own, "c-3"), transaction(other, "c-4")]
    )
    outcome = await call(served, "/loyalty.v1.TransactionService/PostTransactions", key, many)
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    outcome = await call(
        served,
        "/loyalty.v1.TransactionService/StreamTransactions",
        key,
        transactions.StreamTransactionsRequest(transaction=transaction(other, "c-5")),
    )
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    account = "/loyalty.v1.AdminService/GetAccount"
    mine = await call(served, account, key, admin.GetAccountRequest(account=own))
    assert mine == (grpc.StatusCode.OK, None)
    theirs = await call(served, account, key, admin.GetAccountRequest(account=other))
    assert_refused(theirs, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    # An RPC that acts on no card is not a card-scoped caller's, whatever its roles.
    outcome = await call(
        served,
        "/loyalty.v1.AdminService/GetProgram",
        key,
        admin.GetProgramRequest(program_id="northwind"),
    )
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    # Nothing of the refused calls was posted: only c-1's purchase is on the ledger.
    rows = await served.admin.ListLedger(admin.ListLedgerRequest(account=other))
    assert not any(entry.request_id.startswith("c-") for entry in rows.entries)


# --------------------------------------------------------------------------- bearer tokens


class Issuer:
    """An OAuth 2.0 issuer's signing key and JWKS, making tokens for the tests."""

    def __init__(self, directory: Path, kid: str = "k1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}
        self.path = directory / "jwks.json"
        self.path.write_text(json.dumps(self.jwks))

    def token(
        self, *, key: Any = None, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "pos-gateway",
            "iat": now,
            "exp": now + 300,
            "roles": [roles.PROCESSOR],
            **claims,
        }
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(
            body, key or self.key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})}
        )


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def _token_settings(jwks: str) -> dict[str, Any]:
    return {
        "auth_token_issuer": ISSUER,
        "auth_token_audience": AUDIENCE,
        "auth_token_jwks": jwks,
        "auth_token_leeway_seconds": 5,
    }


async def test_tokens_of_the_issuer_are_accepted_and_every_other_refused(
    start_served: StartServed, cards: list[str], issuer: Issuer, tmp_path: Path
) -> None:
    served = await start_served(**_token_settings(str(issuer.path)))
    good = await post(served, bearer(issuer.token()), cards[11], "t-1")
    assert good == (grpc.StatusCode.OK, None)
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "expired": issuer.token(iat=now - 600, exp=now - 60),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://elsewhere.test"),
        "wrong key": issuer.token(key=stranger),
        "unknown kid": issuer.token(headers={"kid": "k9"}),
        "no expiry": issuer.token(exp=None),
        "no subject": issuer.token(sub=None),
        "roles not a list": issuer.token(roles={"Processor": True}),
        "HS256 with the public key": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "roles": ["Processor"]},
            "a shared secret long enough to sign with",
            algorithm="HS256",
            headers={"kid": issuer.kid},
        ),
    }
    for why, token in refused.items():
        outcome = await post(served, bearer(token), cards[11], f"t-{why}")
        assert outcome[0] == grpc.StatusCode.UNAUTHENTICATED, why
        assert outcome[1].reason == "API_AUTHENTICATION_FAILED", why
    viewer = issuer.token(roles=[roles.VIEWER])
    outcome = await post(served, bearer(viewer), cards[11], "t-viewer")
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
    scoped = issuer.token(cards=[cards[12]])
    outcome = await post(served, bearer(scoped), cards[11], "t-scoped")
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "CARD_NOT_PERMITTED")
    outcome = await post(served, bearer(scoped), cards[12], "t-own")
    assert outcome == (grpc.StatusCode.OK, None)


async def test_a_token_within_the_clock_skew_is_accepted(
    start_served: StartServed, cards: list[str], issuer: Issuer
) -> None:
    served = await start_served(**_token_settings(str(issuer.path)))
    now = int(time.time())
    token = issuer.token(exp=now - 2)  # 2 s past its expiry, inside the 5 s allowed
    outcome = await post(served, bearer(token), cards[13], "skew-1")
    assert outcome == (grpc.StatusCode.OK, None)


@pytest.fixture
def jwks_url(issuer: Issuer) -> Iterator[str]:
    """The issuer's JWKS served over HTTP on a free loopback port."""
    body = json.dumps(issuer.jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


async def test_the_jwks_may_come_from_a_url(
    start_served: StartServed, cards: list[str], issuer: Issuer, jwks_url: str
) -> None:
    served = await start_served(**_token_settings(jwks_url))
    outcome = await post(served, bearer(issuer.token()), cards[14], "url-1")
    assert outcome == (grpc.StatusCode.OK, None)


def test_a_jwks_url_in_the_clear_beyond_loopback_is_refused() -> None:
    from processor.service.auth import TokenSettings, TokenVerifier

    with pytest.raises(InputFileError, match="https"):
        TokenVerifier(TokenSettings(ISSUER, AUDIENCE, "http://issuer.example/jwks.json", 5))


async def test_a_symmetric_key_in_the_jwks_is_never_used(
    start_served: StartServed, cards: list[str], tmp_path: Path
) -> None:
    secret = "a shared secret long enough to sign with, 32+ bytes"
    encoded = base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "k1", "k": encoded}]}))
    served = await start_served(**_token_settings(str(path)))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "roles": ["Processor"]}
    token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "k1"})
    outcome = await post(served, bearer(token), cards[17], "oct")
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")


def test_the_demo_is_served_on_loopback_only() -> None:
    settings = Settings(demo=True, listen="0.0.0.0:50051", metrics_listen="")
    with pytest.raises(InputFileError, match="the demo serves on loopback only"):
        check_ports(settings)
    # A container publishing its port on the host's loopback says so (ops/compose.yaml).
    check_ports(
        Settings(demo=True, listen="0.0.0.0:50051", metrics_listen="", plaintext_allowed=True)
    )


def test_token_settings_incomplete_or_unreadable_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as incomplete:
        token_settings(Settings(auth_token_issuer=ISSUER))
    text = str(incomplete.value)
    assert "auth_token_audience" in text and "auth_token_jwks" in text
    from processor.service.auth import TokenSettings, TokenVerifier

    for content in (None, "not json", json.dumps({"keys": "no"})):
        path = tmp_path / "jwks.json"
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
        with pytest.raises(InputFileError) as unreadable:
            TokenVerifier(TokenSettings(ISSUER, AUDIENCE, str(path), 5))
        assert "auth_token_jwks" in str(unreadable.value) and str(path) in str(unreadable.value)


# --------------------------------------------------------------------------- certificates


def _certificate(common_name: str | None, organizations: list[str]) -> bytes:
    """A self-signed certificate of this subject (the CN left out when None)."""
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, one) for one in organizations]
    if common_name is not None:
        names.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    subject = x509.Name(names)
    return _signed(subject, ec.generate_private_key(ec.SECP256R1()), subject, ca=True, san=False)[0]


def test_a_client_certificate_names_the_principal_and_its_organizations_the_roles() -> None:
    identities = CertificateIdentities()
    principal = identities.principal(
        _certificate("pos-gateway", [roles.PROCESSOR, "Finance", roles.VIEWER])
    )
    assert principal.name == "certificate:pos-gateway"
    assert principal.roles == {roles.PROCESSOR, roles.VIEWER}  # not a role: left out
    assert principal.cards is None
    with pytest.raises(Exception, match="common name"):
        identities.principal(_certificate(None, [roles.PROCESSOR]))
    with pytest.raises(Exception, match="cannot be read"):
        identities.principal(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )


# --------------------------------------------------------------------------- buf curl


def _buf() -> str | None:
    for candidate in (
        os.environ.get("LOYALTY_BUF"),
        shutil.which("buf"),
        str(ROOT / ".tools" / "node_modules" / ".bin" / "buf"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


async def _buf_curl(buf: str, address: str, header: str, card: str, request_id: str) -> Any:
    body = json.dumps(
        {
            "transaction": {
                "context": {
                    "request_id": request_id,
                    "account": card,
                    "local_time": "2026-03-02T10:00:00",
                    "location": "S001",
                },
                "purchase": {
                    "currency": "USD",
                    "lines": [{"number": 1, "item": "JACKET-1", "amount": "12000",
                               "quantity": 1, "hierarchy": ["OUTERWEAR"]}],
                },
            }
        }
    )  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-H", header,
        "--data", body, f"http://{address}/loyalty.v1.TransactionService/PostTransaction",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 60)
    return child.returncode, out.decode(), err.decode()


async def test_buf_curl_posts_with_the_demo_key_and_with_a_token_as_the_readme_shows(
    start_served: StartServed, cards: list[str], issuer: Issuer
) -> None:
    buf = _buf()
    if buf is None:
        pytest.skip("no buf binary: set LOYALTY_BUF, put buf on PATH or npm install @bufbuild/buf")
    served = await start_served(demo=True, **_token_settings(str(issuer.path)))
    await demo_keys(Credentials(served.store))
    header = f"x-api-key: {DEMO_KEYS[roles.PROCESSOR]}"
    code, out, err = await _buf_curl(buf, served.address, header, cards[15], "buf-1")
    assert code == 0, err
    assert json.loads(out)["result"]["status"] == "RESULT_STATUS_APPROVED"
    header = f"authorization: Bearer {issuer.token()}"
    code, out, err = await _buf_curl(buf, served.address, header, cards[15], "buf-2")
    assert code == 0, err
    assert json.loads(out)["result"]["requestId"] == "buf-2"
    code, out, err = await _buf_curl(buf, served.address, "x-api-key: lk_x_y", cards[15], "b3")
    assert code != 0 and "unauthenticated" in (out + err).lower()


# --------------------------------------------------------------------------- mutual TLS


def _signed(
    issuer_name: x509.Name,
    issuer_key: Any,
    subject: x509.Name,
    *,
    ca: bool,
    san: bool,
    expired: bool = False,
) -> tuple[bytes, bytes]:
    """A certificate for ``subject`` signed by the issuer: (certificate PEM, key PEM). A
    CA's certificate is its own key's (self-signed)."""
    key = issuer_key if ca else ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=3 if expired else 0, minutes=5))
        .not_valid_after(now + datetime.timedelta(days=-1 if expired else 1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _name(common_name: str, *organizations: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, one) for one in organizations]
    )


async def test_a_client_certificate_is_a_credential_its_organizations_the_roles(
    start_served: StartServed, cards: list[str], tmp_path: Path
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("loyalty test CA")
    ca_pem, _ = _signed(ca_name, ca_key, ca_name, ca=True, san=False)
    server_pem, server_key = _signed(ca_name, ca_key, _name("server"), ca=False, san=True)
    files = {"ca.crt": ca_pem, "server.crt": server_pem, "server.key": server_key}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    served = await start_served(
        tls_cert=str(tmp_path / "server.crt"),
        tls_key=str(tmp_path / "server.key"),
        tls_client_ca=str(tmp_path / "ca.crt"),
    )

    async def post(client: x509.Name, request_id: str, metadata: Any = ()) -> Any:
        certificate, key = _signed(ca_name, ca_key, client, ca=False, san=False)
        credentials = grpc.ssl_channel_credentials(ca_pem, key, certificate)
        async with grpc.aio.secure_channel(served.address, credentials) as channel:
            stub = proto.transactions_grpc.TransactionServiceStub(channel)
            try:
                await stub.PostTransaction(
                    purchase(cards[16], request_id), metadata=metadata, timeout=30
                )
            except grpc.aio.AioRpcError as error:
                return error.code(), error_info_of(error) or error.details()
        return grpc.StatusCode.OK, None

    assert await post(_name("pos-gateway", roles.PROCESSOR), "m-1") == (grpc.StatusCode.OK, None)
    outcome = await post(_name("reporting", roles.VIEWER), "m-2")
    assert_refused(outcome, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
    # A credential sent is the one used, whatever the certificate says.
    outcome = await post(_name("pos-gateway", roles.PROCESSOR), "m-3", with_key("lk_x_" + "y" * 20))
    assert_refused(outcome, grpc.StatusCode.UNAUTHENTICATED, "API_AUTHENTICATION_FAILED")


async def test_an_expired_certificate_fails_the_handshake_either_way(
    start_served: StartServed, cards: list[str], tmp_path: Path
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("loyalty test CA")
    ca_pem, _ = _signed(ca_name, ca_key, ca_name, ca=True, san=False)

    async def handshake(server_expired: bool, client_expired: bool) -> grpc.StatusCode:
        folder = tmp_path / f"s{int(server_expired)}c{int(client_expired)}"
        folder.mkdir()
        server_pem, server_key = _signed(
            ca_name, ca_key, _name("server"), ca=False, san=True, expired=server_expired
        )
        for name, content in (("ca.crt", ca_pem), ("s.crt", server_pem), ("s.key", server_key)):
            (folder / name).write_bytes(content)
        served = await start_served(
            tls_cert=str(folder / "s.crt"),
            tls_key=str(folder / "s.key"),
            tls_client_ca=str(folder / "ca.crt"),
        )
        client = _name("pos-gateway", roles.PROCESSOR)
        certificate, key = _signed(
            ca_name, ca_key, client, ca=False, san=False, expired=client_expired
        )
        credentials = grpc.ssl_channel_credentials(ca_pem, key, certificate)
        async with grpc.aio.secure_channel(served.address, credentials) as channel:
            stub = proto.transactions_grpc.TransactionServiceStub(channel)
            try:
                await stub.PostTransaction(purchase(cards[18], f"x-{folder.name}"), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    assert await handshake(False, False) == grpc.StatusCode.OK
    assert await handshake(False, True) == grpc.StatusCode.UNAVAILABLE
    assert await handshake(True, False) == grpc.StatusCode.UNAVAILABLE
