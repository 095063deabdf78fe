"""TLS on the gRPC and metrics ports: served, mutual, read again when renewed, and refused
when misconfigured (naming the setting, file and reason) or plaintext beyond loopback."""

from __future__ import annotations

import http.client
import logging
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from processor.cli import main
from processor.errors import InputFileError
from processor.limits import PEM_FILE_BYTES_MAX
from processor.runtime import metrics
from processor.runtime.settings import Settings
from processor.service import tls
from processor.service.server import check_ports
from tests.plugins.server import StartServed

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

HEALTH = health_pb2.HealthCheckRequest()


@dataclass(frozen=True)
class Authority:
    """A certificate authority and what it signed: a server and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def _authority(directory: Path, name: str) -> Authority:
    directory.mkdir(parents=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", f"/CN={name} test CA")  # fmt: skip
    signed = {}
    for role, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, request, cert = (directory / f"{role}.{suffix}" for suffix in ("key", "csr", "crt"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                 str(request), "-subj", f"/CN={name} {role}")  # fmt: skip
        extensions = directory / f"{role}.ext"
        extensions.write_text(extension + "\n")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile",
                 str(extensions))  # fmt: skip
        signed[role] = (cert, key)
    return Authority(ca, *signed["server"], *signed["client"])


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Authority]:
    root = tmp_path_factory.mktemp("tls")
    return _authority(root / "first", "first"), _authority(root / "second", "second")


def _settings(**fields: Any) -> Settings:
    return Settings(listen="127.0.0.1:0", metrics_listen="", **fields)


def _files(authority: Authority, *, mutual: bool = False) -> tls.TlsFiles:
    files = tls.tls_files(
        _settings(
            tls_cert=str(authority.server_cert),
            tls_key=str(authority.server_key),
            tls_client_ca=str(authority.ca) if mutual else None,
        )
    )
    assert files is not None
    return files


@pytest.fixture
async def health_server() -> AsyncIterator[Any]:
    """Starts a server with only gRPC health on the given TLS files; yields its port."""
    servers = []

    async def serve(files: tls.TlsFiles) -> int:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(files))
        await server.start()
        servers.append(server)
        return port

    yield serve
    for server in servers:
        await server.stop(None)


async def _check(port: int, credentials: grpc.ChannelCredentials | None) -> bool:
    """Whether a health check over a new channel with ``credentials`` (None: plaintext)
    is answered."""
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return False
    return True


def _trusting(authority: Authority, *, client: Authority | None = None) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=authority.ca.read_bytes(),
        private_key=client.client_key.read_bytes() if client else None,
        certificate_chain=client.client_cert.read_bytes() if client else None,
    )


async def test_a_tls_port_answers_tls_clients_and_no_plaintext(
    authorities: tuple[Authority, Authority], health_server: Any
) -> None:
    first, second = authorities
    port = await health_server(_files(first))
    assert await _check(port, _trusting(first))
    assert not await _check(port, None)
    assert not await _check(port, _trusting(second))  # a server this client does not trust


async def test_mutual_tls_answers_only_clients_with_a_certificate_its_ca_signed(
    authorities: tuple[Authority, Authority], health_server: Any
) -> None:
    first, second = authorities
    port = await health_server(_files(first, mutual=True))
    assert await _check(port, _trusting(first, client=first))
    assert not await _check(port, _trusting(first))
    assert not await _check(port, _trusting(first, client=second))


async def test_renewed_certificates_are_served_to_new_connections_without_a_restart(
    authorities: tuple[Authority, Authority], health_server: Any, tmp_path: Path
) -> None:
    first, second = authorities
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    port = await health_server(tls.TlsFiles(cert, key))
    assert await _check(port, _trusting(first))
    # A renewal half written: the certificates in use stay, and still answer.
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot yet\n")
    assert await _check(port, _trusting(first))
    # The renewal complete: new connections get the new certificate.
    shutil.copy(second.server_cert, cert)
    shutil.copy(second.server_key, key)
    assert await _check(port, _trusting(second))
    assert not await _check(port, _trusting(first))


async def test_the_server_serves_transactions_over_tls_with_the_settings(
    authorities: tuple[Authority, Authority], start_served: StartServed
) -> None:
    first, _ = authorities
    served = await start_served(
        tls_cert=str(first.server_cert), tls_key=str(first.server_key)
    )
    assert await _check(served.running.port, _trusting(first))
    assert not await _check(served.running.port, None)


def test_the_metrics_port_serves_over_tls_with_the_same_certificates(
    authorities: tuple[Authority, Authority],
) -> None:
    first, _ = authorities
    server = metrics.start_exposition("127.0.0.1:0", tls.metrics_context(_files(first)))
    try:
        port = server.server_address[1]
        context = ssl.create_default_context(cafile=str(first.ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context) as page:
            assert page.status == 200
        with pytest.raises((OSError, http.client.HTTPException)):  # no plaintext answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # A client that connects and never starts its handshake holds up nobody else.
        with socket.create_connection(("127.0.0.1", port)):
            page = urllib.request.urlopen(
                f"https://127.0.0.1:{port}/metrics", context=context, timeout=5
            )
            assert page.status == 200
            page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_port_serves_renewed_certificates_without_a_restart(
    authorities: tuple[Authority, Authority], tmp_path: Path
) -> None:
    first, second = authorities
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    server = metrics.start_exposition("127.0.0.1:0", tls.metrics_context(tls.TlsFiles(cert, key)))

    def scraped(authority: Authority) -> bool:
        context = ssl.create_default_context(cafile=str(authority.ca))
        url = f"https://127.0.0.1:{server.server_address[1]}/metrics"
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as page:
                return bool(page.status == 200)
        except OSError:  # ssl.SSLError and URLError: a certificate it does not trust
            return False

    try:
        assert scraped(first) and not scraped(second)
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot yet\n")  # a renewal half written
        assert scraped(first)
        shutil.copy(second.server_cert, cert)
        shutil.copy(second.server_key, key)
        assert scraped(second) and not scraped(first)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("listen", "allowed", "refused"),
    [
        ("127.0.0.1:50051", False, False),
        ("[::1]:50051", False, False),
        ("localhost:50051", False, False),
        ("0.0.0.0:50051", False, True),
        ("[::]:50051", False, True),
        (":50051", False, True),
        ("10.1.2.3:50051", False, True),
        ("processor.internal:50051", False, True),
        ("0.0.0.0:50051", True, False),
    ],
)
def test_plaintext_is_refused_beyond_loopback_unless_allowed(
    listen: str, allowed: bool, refused: bool
) -> None:
    settings = Settings(listen=listen, metrics_listen="", plaintext_allowed=allowed)
    if not refused:
        check_ports(settings)
        return
    with pytest.raises(InputFileError) as caught:
        check_ports(settings)
    assert "listen (LOYALTY_LISTEN)" in str(caught.value)
    assert "LOYALTY_PLAINTEXT_ALLOWED" in str(caught.value)


def test_a_metrics_address_without_a_host_is_loopback_and_any_other_is_checked() -> None:
    check_ports(Settings(listen="127.0.0.1:0", metrics_listen=":8000"))
    check_ports(Settings(listen="127.0.0.1:0", metrics_listen="8000"))
    with pytest.raises(InputFileError, match=r"0\.0\.0\.0:8000") as caught:
        check_ports(Settings(listen="127.0.0.1:0", metrics_listen="0.0.0.0:8000"))
    assert "metrics_listen (LOYALTY_METRICS_LISTEN)" in str(caught.value)


def test_tls_on_any_address_is_accepted(authorities: tuple[Authority, Authority]) -> None:
    first, _ = authorities
    check_ports(
        Settings(
            listen="0.0.0.0:50051",
            metrics_listen="0.0.0.0:8000",
            tls_cert=str(first.server_cert),
            tls_key=str(first.server_key),
        )
    )


def _bad_files(authorities: tuple[Authority, Authority], tmp_path: Path) -> dict[str, Any]:
    first, second = authorities
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * PEM_FILE_BYTES_MAX)
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted.key"
    _openssl("pkey", "-in", str(first.server_key), "-aes256", "-passout", "pass:secret",
             "-out", str(encrypted))  # fmt: skip
    cert, key = str(first.server_cert), str(first.server_key)
    return {
        "key without cert": ({"tls_key": key}, "tls_cert (LOYALTY_TLS_CERT)", "both"),
        "cert without key": ({"tls_cert": cert}, "tls_key (LOYALTY_TLS_KEY)", "both"),
        "client CA alone": (
            {"tls_client_ca": str(first.ca)}, "tls_client_ca (LOYALTY_TLS_CLIENT_CA)", "needs"
        ),
        "missing cert": (
            {"tls_cert": str(missing), "tls_key": key}, str(missing), "cannot be read"
        ),
        "cert not PEM": ({"tls_cert": str(not_pem), "tls_key": key}, str(not_pem), "no PEM"),
        "key not PEM": ({"tls_cert": cert, "tls_key": str(not_pem)}, str(not_pem), "no PEM"),
        "huge cert": ({"tls_cert": str(huge), "tls_key": key}, str(huge), "is over"),
        "key of another cert": (
            {"tls_cert": cert, "tls_key": str(second.server_key)}, "tls_key", "does not load"
        ),
        "encrypted key": (
            {"tls_cert": cert, "tls_key": str(encrypted)}, str(encrypted), "is encrypted"
        ),
        "client CA not PEM": (
            {"tls_cert": cert, "tls_key": key, "tls_client_ca": str(not_pem)}, str(not_pem),
            "no PEM",
        ),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "key without cert",
        "cert without key",
        "client CA alone",
        "missing cert",
        "cert not PEM",
        "key not PEM",
        "huge cert",
        "key of another cert",
        "encrypted key",
        "client CA not PEM",
    ],
)
def test_bad_tls_settings_name_the_setting_file_and_reason(
    case: str, authorities: tuple[Authority, Authority], tmp_path: Path
) -> None:
    fields, named, why = _bad_files(authorities, tmp_path)[case]
    with pytest.raises(InputFileError) as caught:
        check_ports(_settings(**fields))
    assert named in str(caught.value) and why in str(caught.value)


def test_serve_refuses_plaintext_beyond_loopback_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "listen (LOYALTY_LISTEN)" in error and "loopback" in error
    assert list(tmp_path.iterdir()) == []  # no embedded server was started


def test_renewed_files_that_do_not_load_are_read_once_until_they_change_again(
    authorities: tuple[Authority, Authority], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = authorities
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    rotation = tls._Renewed(tls.TlsFiles(cert, key), tls._configuration)
    assert rotation() is None  # nothing changed
    shutil.copy(second.server_key, key)  # a key that is not the certificate's
    with caplog.at_level(logging.WARNING, logger="processor.service.tls"):
        assert rotation() is None and rotation() is None and rotation() is None
    assert len(caplog.records) == 1  # read once, not at every handshake
    shutil.copy(second.server_cert, cert)  # the renewal completed
    assert rotation() is not None
