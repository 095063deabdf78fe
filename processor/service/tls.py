"""TLS on the gRPC and metrics ports: certificates from files, read again when they change.

``tls_cert`` and ``tls_key`` (PEM files) turn TLS on; ``tls_client_ca`` (a PEM bundle)
makes it mutual: a client must present a certificate that CA signed. The gRPC port reads
the files again when one of them changes (a renewal by cert-manager or certbot needs no
restart): gRPC asks :class:`_Rotation` before each new connection's handshake, and a
change of any file's modification time or size loads all three again. Connections open
already keep the certificate they began with. A file that cannot be read or parsed at that
moment (half written by a renewal) leaves the certificates in use as they were, logged, and
is tried again at the next handshake.

Plaintext is for loopback only: a server listening on any other address without TLS
refuses to start unless ``plaintext_allowed`` says so (a TLS-terminating proxy or a mesh
sidecar on the same host in front of it). :func:`check_listen` says why, naming the
settings.
"""

# grpcio ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from processor.errors import InputFileError, Problem
from processor.limits import PEM_FILE_BYTES_MAX

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate chain, its key and the client CA bundle are."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]


def tls_files(settings: Any) -> TlsFiles | None:
    """The TLS files the settings name (None: plaintext), each checked to be readable
    PEM of its kind; a problem is an InputFileError naming the setting, file and reason."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not cert and not key:
        if client_ca:
            raise InputFileError(
                "settings",
                [Problem("tls_client_ca (LOYALTY_TLS_CLIENT_CA)", "needs tls_cert and tls_key")],
            )
        return None
    if not cert or not key:
        missing = "tls_cert (LOYALTY_TLS_CERT)" if not cert else "tls_key (LOYALTY_TLS_KEY)"
        raise InputFileError(
            "settings", [Problem(missing, "TLS needs both the certificate and key")]
        )
    files = TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    _load(files)  # refused now, at start, rather than at the first handshake
    return files


def check_listen(
    listen: str, tls: TlsFiles | None, plaintext_allowed: bool, setting: str = "listen"
) -> None:
    """Refuse plaintext on an address other than loopback, unless allowed on purpose;
    ``setting`` names the address's setting in the refusal."""
    if tls is not None or plaintext_allowed or is_loopback(listen):
        return
    raise InputFileError(
        "settings",
        [
            Problem(
                f"{setting} (LOYALTY_{setting.upper()})",
                f"{listen} is not a loopback address, and plaintext is for loopback only: set "
                "tls_cert and tls_key (LOYALTY_TLS_CERT, LOYALTY_TLS_KEY), or "
                "plaintext_allowed (LOYALTY_PLAINTEXT_ALLOWED=true) when a proxy on this "
                "host terminates TLS",
            )
        ],
    )


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` binds loopback only (``localhost``, 127.0.0.0/8 or ::1)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or empty (every address)
        return False


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that follow the files as they change (gRPC asks
    for a renewed configuration before each new connection's handshake)."""
    # The fetcher answers None when nothing changed, as gRPC's documentation says it may
    # (its type information says otherwise).
    renewed: Any = _Renewed(files, _configuration)
    return grpc.dynamic_ssl_server_credentials(
        renewed.current, renewed, require_client_authentication=files.client_ca is not None
    )


def metrics_context(files: TlsFiles | None) -> Callable[[], ssl.SSLContext] | None:
    """The metrics port's TLS context for the same certificates, as a function called for
    each new connection that reads the files again when they changed (as the gRPC port
    does); None for plaintext."""
    if files is None:
        return None
    renewed = _Renewed(files, _ssl_context)

    def context() -> ssl.SSLContext:
        renewed()
        return renewed.current

    return context


def _ssl_context(files: TlsFiles) -> ssl.SSLContext:
    _load(files)  # checked as at start: a renewal that does not load is not taken
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca is not None:
        context.load_verify_locations(cafile=files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Renewed(Generic[_T]):
    """What ``make`` builds from the TLS files (``current``), built again when one of them
    changed and it loads. Called: the new one then, else None (gRPC's fetcher protocol)."""

    def __init__(self, files: TlsFiles, make: Callable[[TlsFiles], _T]) -> None:
        self._files = files
        self._make = make
        self._seen = _stamps(files)
        self.current = make(files)

    def __call__(self) -> _T | None:
        try:
            stamps = _stamps(self._files)
        except OSError as error:
            log.warning("TLS files unreadable (%s): keeping the certificates in use", error)
            return None
        if stamps == self._seen:
            return None
        # Remembered whether they load or not: files left broken are read once, not at
        # every connection, and read again when they change again.
        self._seen = stamps
        try:
            built = self._make(self._files)
        except (InputFileError, ssl.SSLError, OSError) as error:
            log.warning("TLS files changed but do not load (%s): keeping those in use", error)
            return None
        log.info("TLS certificates read again from %s", self._files.cert)
        self.current = built
        return built


def _stamps(files: TlsFiles) -> list[tuple[int, int]]:
    stats = [os.stat(path) for path in files.paths()]
    return [(stat.st_mtime_ns, stat.st_size) for stat in stats]


def _configuration(files: TlsFiles) -> Any:
    cert, key, client_ca = _load(files)
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def _load(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    """The three files' bytes, checked: readable, PEM, and a key that matches the
    certificate (Python's ssl module loads the pair as a TLS server would)."""
    cert = _read(files.cert, "tls_cert", b"CERTIFICATE")
    key = _read(files.key, "tls_key", b"PRIVATE KEY")
    client_ca = _read(files.client_ca, "tls_client_ca", b"CERTIFICATE") if files.client_ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as error:
        raise InputFileError(
            str(files.key),
            [Problem("tls_key (LOYALTY_TLS_KEY)", f"does not load with {files.cert}: {error}")],
        ) from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (ssl.SSLError, OSError) as error:
            raise InputFileError(
                str(files.client_ca),
                [Problem("tls_client_ca (LOYALTY_TLS_CLIENT_CA)", f"does not load: {error}")],
            ) from None
    return cert, key, client_ca


def _read(path: Path, setting: str, kind: bytes) -> bytes:
    where = f"{setting} (LOYALTY_{setting.upper()})"
    try:
        with path.open("rb") as opened:
            data = opened.read(PEM_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise InputFileError(
            str(path), [Problem(where, f"cannot be read: {error.strerror}")]
        ) from None
    if len(data) > PEM_FILE_BYTES_MAX:
        raise InputFileError(str(path), [Problem(where, f"is over {PEM_FILE_BYTES_MAX} bytes")])
    if b"-----BEGIN " not in data or kind not in data:
        raise InputFileError(str(path), [Problem(where, f"holds no PEM {kind.decode()}")])
    if kind == b"PRIVATE KEY" and b"ENCRYPTED" in data:
        # OpenSSL would ask for its passphrase on the terminal, at start or mid-rotation.
        why = "is encrypted: give the key unencrypted, readable by the server only"
        raise InputFileError(str(path), [Problem(where, why)])
    return data


__all__ = [
    "TlsFiles",
    "check_listen",
    "is_loopback",
    "metrics_context",
    "server_credentials",
    "tls_files",
]
