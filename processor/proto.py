"""The one door to the generated code of the public gRPC contract (package loyalty.v1).

The modules are generated at build time from ``proto/loyalty/v1/*.proto`` (see setup.py) into
the top-level package ``loyalty.v1``, where their own absolute imports expect them. The rest of
the processor imports them from here only, under short names::

    from processor.proto import common, transactions, transactions_grpc

    request = transactions.PostTransactionRequest(
        transaction=transactions.Transaction(context=common.RequestContext(request_id="t-1"))
    )

Failures are never fields of these messages: they are gRPC statuses whose details carry a
``google.rpc.ErrorInfo`` with domain :data:`ERROR_DOMAIN` (see docs/api.md).
"""

from __future__ import annotations

try:
    from loyalty.v1 import admin_pb2 as admin
    from loyalty.v1 import admin_pb2_grpc as admin_grpc
    from loyalty.v1 import awards_pb2 as awards
    from loyalty.v1 import awards_pb2_grpc as awards_grpc
    from loyalty.v1 import common_pb2 as common
    from loyalty.v1 import tender_pb2 as tender
    from loyalty.v1 import tender_pb2_grpc as tender_grpc
    from loyalty.v1 import transactions_pb2 as transactions
    from loyalty.v1 import transactions_pb2_grpc as transactions_grpc
except ImportError as error:  # pragma: no cover - only on a checkout that was never built
    raise ImportError(
        "the gRPC modules (package loyalty.v1) are generated from proto/ at build time and are "
        "missing or stale: run `make install` (or `python setup.py build_proto`)"
    ) from error

PACKAGE = "loyalty.v1"
"""The proto package of the contract."""

ERROR_DOMAIN = PACKAGE
"""The ``google.rpc.ErrorInfo.domain`` of every error status the processor returns."""

FILES = (common, transactions, tender, awards, admin)
"""The generated ``_pb2`` modules, one per .proto file."""

SERVICE_NAMES: tuple[str, ...] = tuple(
    service.full_name for module in FILES for service in module.DESCRIPTOR.services_by_name.values()
)
"""Full names of the contract's services, for health checking and server reflection."""

__all__ = [
    "ERROR_DOMAIN",
    "FILES",
    "PACKAGE",
    "SERVICE_NAMES",
    "admin",
    "admin_grpc",
    "awards",
    "awards_grpc",
    "common",
    "tender",
    "tender_grpc",
    "transactions",
    "transactions_grpc",
]
