"""A Node client (@grpc/grpc-js and @grpc/proto-loader, the packages a Node developer would
pick) against a served demo: a purchase, its replay, a stream, and an error whose
google.rpc.Status details it decodes. `.ci/run` installs the two packages (pinned) into
.tools and says where with LOYALTY_NODE_MODULES; without them the test is skipped, naming
what is missing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import google.rpc
import pytest
from plugins.server import Served

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = Path(os.environ.get("LOYALTY_NODE_MODULES", ROOT / ".tools" / "node_modules"))


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: install Node.js (`.ci/run` uses the machine's)")
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        if not (NODE_MODULES / package).is_dir():
            pytest.skip(f"{package} is not in {NODE_MODULES}: `.ci/run` installs it from npm")
    return node


async def test_a_node_client_posts_replays_streams_and_decodes_error_details(
    served: Served, cards: list[str]
) -> None:
    node = node_or_skip()
    environment = {
        **os.environ,
        "NODE_PATH": str(NODE_MODULES),
        "ADDRESS": served.address,
        "API_KEY": served.key,
        "CARD": cards[0],
        "PROTO_DIR": str(ROOT / "proto"),
        # googleapis-common-protos ships google/rpc/*.proto beside its Python modules.
        "GOOGLE_PROTO_DIR": str(Path(next(iter(google.rpc.__path__))).parents[1]),
    }
    ran = await asyncio.to_thread(  # the server answers on this test's event loop
        subprocess.run,
        [node, str(ROOT / "tests" / "node" / "client.js")],
        capture_output=True, text=True, env=environment, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert got["first"] == {
        "requestId": "node-1",
        "status": "RESULT_STATUS_APPROVED",
        "replayed": False,
        "points": "295",
    }
    assert got["again"] == {**got["first"], "replayed": True}  # the same answer, posted once
    assert [(one["requestId"], one["status"]) for one in got["streamed"]] == [
        ("node-2", "RESULT_STATUS_APPROVED"),
        ("node-3", "RESULT_STATUS_APPROVED"),
    ]
    assert got["streamed"][1]["points"] == "275"
    assert got["failure"]["code"] == 5  # NOT_FOUND
    (info,) = [one for one in got["failure"]["details"] if one["type"] == "google.rpc.ErrorInfo"]
    assert (info["reason"], info["domain"]) == ("UNKNOWN_CARD", "loyalty.v1")
