"""The public gRPC contract: generated, importable, complete, documented and lint-clean.

The modules of package loyalty.v1 are generated from proto/ at build time (setup.py); these
tests find a stale or missing generation, a changed method list, a message that does not
survive the wire, and (when a ``buf`` binary is available) any lint problem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format

from processor import proto
from processor.proto import admin, awards, common, tender, transactions

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"

EXPECTED_METHODS = {
    "loyalty.v1.TransactionService": [
        "PostTransaction",
        "StreamTransactions",
        "PostTransactions",
    ],
    "loyalty.v1.TenderService": [
        "Activate",
        "Reload",
        "GetBalance",
        "Redeem",
        "PreAuthorize",
        "Capture",
        "Release",
        "CashOut",
        "Merge",
    ],
    "loyalty.v1.AwardService": ["ListAwards", "RedeemAward", "RedeemAwardValue"],
    "loyalty.v1.AdminService": [
        "CreateProgram",
        "UpdateProgram",
        "ActivateProgram",
        "DeactivateProgram",
        "GetProgram",
        "SearchPrograms",
        "GenerateCards",
        "ImportCards",
        "SetBatchStatus",
        "SetBatchExpiry",
        "EnrollCustomer",
        "RegisterCard",
        "SetAudiences",
        "GetAccount",
        "ListLedger",
        "UnlockPin",
        "ListAudit",
        "GetScorecard",
        "ListEvents",
        "WatchEvents",
        "ListTasks",
        "ClaimTask",
        "CompleteTask",
    ],
}
STREAMING_METHODS = {"loyalty.v1.TransactionService.StreamTransactions"}
SERVER_STREAMING_METHODS = {"loyalty.v1.AdminService.WatchEvents"}


def test_generated_modules_import_by_absolute_path() -> None:
    # A fresh interpreter, outside the repository, so only the installed package can answer:
    # the _pb2_grpc modules import their _pb2 as `from loyalty.v1 import ...`.
    names = [
        name for module in proto.FILES for name in (module.__name__, f"{module.__name__}_grpc")
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    result = subprocess.run(
        [sys.executable, "-c", code, *names],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(sys.executable),
    )
    assert result.returncode == 0, f"cannot import the generated modules:\n{result.stderr}"
    for module in proto.FILES:
        assert module.__name__.startswith("loyalty.v1."), module.__name__


def test_every_proto_file_has_a_generated_module() -> None:
    sources = {path.stem for path in (PROTO_ROOT / "loyalty" / "v1").glob("*.proto")}
    generated = {module.__name__.rpartition(".")[2].removesuffix("_pb2") for module in proto.FILES}
    assert sources == generated, "keep processor.proto.FILES in step with proto/loyalty/v1"


def test_generated_modules_match_the_proto_sources(tmp_path: Path) -> None:
    # Editing a .proto without rebuilding leaves stale modules behind; compile the sources
    # again and compare the descriptors the generated modules were made from.
    protoc = pytest.importorskip("grpc_tools.protoc")
    from importlib import resources

    includes = resources.files("grpc_tools").joinpath("_proto")
    sources = sorted((PROTO_ROOT / "loyalty" / "v1").glob("*.proto"))
    output = tmp_path / "descriptors.pb"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={includes}",
        f"--descriptor_set_out={output}",
        *map(str, sources),
    ]
    assert protoc.main(arguments) == 0, "protoc failed on proto/"
    compiled = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    fresh = {file.name: file for file in compiled.file}
    for file in fresh.values():
        _clear_json_names(file.message_type)
    for module in proto.FILES:
        built = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert built == fresh[built.name], (
            f"{module.__name__} is stale against proto/{built.name}: run `make install` "
            "(or `python setup.py build_proto`)"
        )


def _clear_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    # protoc fills json_name into descriptor sets but leaves it out of generated modules.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


@pytest.mark.parametrize("service", sorted(EXPECTED_METHODS))
def test_service_methods(service: str) -> None:
    descriptor = descriptor_pool.Default().FindServiceByName(service)
    assert [method.name for method in descriptor.methods] == EXPECTED_METHODS[service]
    for method in descriptor.methods:
        assert method.input_type.full_name == f"loyalty.v1.{method.name}Request"
        assert method.output_type.full_name == f"loyalty.v1.{method.name}Response"
        streaming = method.full_name in STREAMING_METHODS
        assert method.client_streaming is streaming, method.full_name
        assert method.server_streaming is (
            streaming or method.full_name in SERVER_STREAMING_METHODS
        ), method.full_name


def test_service_names() -> None:
    assert sorted(proto.SERVICE_NAMES) == sorted(EXPECTED_METHODS)


def test_stubs_and_servicers_exist() -> None:
    for service in EXPECTED_METHODS:
        short = service.rpartition(".")[2]
        module = {
            "TransactionService": proto.transactions_grpc,
            "TenderService": proto.tender_grpc,
            "AwardService": proto.awards_grpc,
            "AdminService": proto.admin_grpc,
        }[short]
        assert hasattr(module, f"{short}Stub")
        assert hasattr(module, f"add_{short}Servicer_to_server")
        servicer = getattr(module, f"{short}Servicer")
        for method in EXPECTED_METHODS[service]:
            assert callable(getattr(servicer, method)), f"{short}Servicer.{method}"


def test_every_enum_starts_unspecified() -> None:
    for module in proto.FILES:
        enums = list(module.DESCRIPTOR.enum_types_by_name.values())
        for enum in enums:
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name} starts with {zero}"


def _full_result() -> common.Result:
    return common.Result(
        request_id="t-0002",
        account="6001200000000010",
        status=common.RESULT_STATUS_APPROVED,
        postings=[
            common.Posting(
                program="giftcard",
                program_version=3,
                balance=common.POSTING_BALANCE_TENDER,
                kind="redeem",
                amount=-5000,
                balance_name="tender",
                date="2026-03-02",
            ),
            common.Posting(
                program="points",
                program_version=3,
                balance=common.POSTING_BALANCE_POINTS,
                kind="regular",
                amount=135,
                balance_name="points:points",
                rule="base",
                date="2026-03-02",
            ),
        ],
        awards=[
            common.AwardIssue(
                code="NW5-7Q2K",
                kind=common.AWARD_KIND_COUPON,
                rule="five-off",
                program="points",
                value=common.Money(units=0, currency="USD"),
                points_cost=common.Points(units=500, precision=0),
                expires_date="2026-06-30",
            )
        ],
        redeemed_codes=["CERT-1"],
        moves=[
            common.LevelMove(
                program="points",
                rule="to-gold",
                kind=common.LEVEL_MOVE_KIND_ADVANCEMENT,
                from_level="silver",
                to_level="gold",
            )
        ],
        tender=common.TenderDecision(
            operation=common.TENDER_OPERATION_REDEEM,
            approved=True,
            requested=common.Money(units=5000, currency="USD"),
            approved_amount=common.Money(units=5000, currency="USD"),
            balance=common.Money(units=5000, currency="USD"),
        ),
        trace=[
            common.TraceEntry(
                program="points",
                rule="weekend",
                fired=False,
                points=common.Points(units=0, precision=0),
                reason="outside bonus period",
            )
        ],
        balances={"tender": 5000, "points:points": 168, "escrow:points": -1},
        balance_exponents={"tender": 2, "points:points": 0, "escrow:points": 0},
        replayed=True,
    )


def test_result_round_trips_on_the_wire_and_as_json() -> None:
    result = _full_result()
    wire = result.SerializeToString(deterministic=True)
    assert common.Result.FromString(wire) == result
    # The sample sets every field, so that none of them escapes the round trip.
    given = {field.name for field, _ in result.ListFields()}
    assert given == set(common.Result.DESCRIPTOR.fields_by_name) - {"reason"}
    text = json_format.MessageToJson(result)
    assert json_format.Parse(text, common.Result()) == result


def test_transaction_kinds_are_one_of() -> None:
    context = common.RequestContext(
        request_id="s1", account="6001200000000010", local_time="2026-03-02T09:05:00"
    )
    transaction = transactions.Transaction(
        context=context,
        purchase=transactions.Purchase(
            currency="USD",
            lines=[common.Line(number=1, item="SHOE-1", amount=12000, quantity=1)],
            tenders=[common.TenderLine(type="visa", amount=12000)],
        ),
    )
    assert transaction.WhichOneof("kind") == "purchase"
    transaction.sale_return.original_id = "s0"
    assert transaction.WhichOneof("kind") == "sale_return"
    assert not transaction.HasField("purchase")
    # Unset means the card was presented; presence is kept on the wire.
    assert not context.HasField("card_present")
    context.card_present = False
    assert common.RequestContext.FromString(context.SerializeToString()).HasField("card_present")


def test_every_message_module_is_reachable_by_short_name() -> None:
    assert tender.ActivateRequest.DESCRIPTOR.full_name == "loyalty.v1.ActivateRequest"
    assert awards.RedeemAwardRequest.DESCRIPTOR.full_name == "loyalty.v1.RedeemAwardRequest"
    assert admin.SearchProgramsRequest.DESCRIPTOR.full_name == "loyalty.v1.SearchProgramsRequest"


def test_api_reference_documents_every_rpc() -> None:
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for service, methods in EXPECTED_METHODS.items():
        for method in methods:
            assert f"{service}/{method}" in reference, f"docs/api.md lacks {service}/{method}"


def _buf() -> str | None:
    for candidate in (
        os.environ.get("LOYALTY_BUF"),
        shutil.which("buf"),
        str(ROOT / "node_modules" / ".bin" / "buf"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_buf_lint() -> None:
    buf = _buf()
    if buf is None:
        pytest.skip("no buf binary: set LOYALTY_BUF, put buf on PATH or npm install @bufbuild/buf")
    result = subprocess.run(
        [buf, "lint"], cwd=PROTO_ROOT, capture_output=True, text=True, check=False
    )
    output = f"{result.stdout}\n{result.stderr}".strip()
    assert result.returncode == 0, f"`buf lint` found problems:\n{output}"
    assert "WARN" not in output, output


_OPTIONS_PLUGIN = """
import sys
from google.protobuf.compiler import plugin_pb2

request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
response = plugin_pb2.CodeGeneratorResponse(
    supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
)
lines = [
    f"{proto.name}\\t{proto.options.go_package}\\t{proto.options.java_package}\\t"
    f"{proto.options.java_multiple_files}"
    for proto in request.proto_file
    if proto.name in request.file_to_generate
]
response.file.add(name="options.tsv", content="\\n".join(lines) + "\\n")
sys.stdout.buffer.write(response.SerializeToString())
"""


def test_the_go_and_java_template_of_the_docs_gives_the_packages_they_name(
    tmp_path: Path,
) -> None:
    buf = _buf()
    if buf is None:
        pytest.skip("no buf binary: set LOYALTY_BUF, put buf on PATH or npm install @bufbuild/buf")
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = reference[reference.index("## Go and Java clients") :]
    template = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    go = [plugin for plugin in template["plugins"] if "go" in str(plugin.get("local"))]
    # Generated files beside their protos' paths, where the section says they land.
    assert go and all(plugin.get("opt") == "paths=source_relative" for plugin in go)
    # The docs' managed mode, with a plugin of ours in place of the languages' (absent here):
    # it writes down the options each file reaches its plugins with.
    plugin = tmp_path / "protoc-gen-options"
    plugin.write_text(f"#!{sys.executable}\n{_OPTIONS_PLUGIN}", encoding="utf-8")
    plugin.chmod(0o755)
    template["plugins"] = [{"local": str(plugin), "out": "gen"}]
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(template), encoding="utf-8")
    result = subprocess.run(
        [buf, "generate", "--template", str(tmp_path / "buf.gen.yaml"), "-o", str(tmp_path)],
        cwd=PROTO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARN" not in result.stderr, result.stderr
    text = (tmp_path / "gen" / "options.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()]
    assert len(rows) == len(list((PROTO_ROOT / "loyalty" / "v1").glob("*.proto")))
    assert {tuple(row[1:]) for row in rows} == {
        ("example.com/pos/gen/go/loyalty/v1;loyaltyv1", "com.example.pos.loyalty.v1", "True")
    }
