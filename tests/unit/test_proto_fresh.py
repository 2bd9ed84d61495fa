"""The committed generated code matches proto/corral.proto.

Regenerates the four files with scripts/gen-proto.sh (the one command that makes
them, also behind `make proto`) into a temp dir and compares them with the
committed ones, so that a .proto edit without `make proto` fails here.

The version stamps that protoc and grpcio-tools write into the code (``# Protobuf
Python Version``, the runtime version check, ``GRPC_GENERATED_VERSION``) are
masked before comparing: CI installs the newest grpcio-tools from PyPI, and a
newer compiler alone does not make the committed code stale.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
GENERATED = ["corral_pb2.py", "corral_pb2.pyi", "corral_pb2_grpc.py", "corral_pb2_grpc.pyi"]

_VERSION_STAMPS = [
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: <masked>"),
    (
        re.compile(
            r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)"
            r"\s*\d+,\s*\d+,\s*\d+,\s*'[^']*',"
        ),
        r"\1 <masked>,",
    ),
    (re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M), "GRPC_GENERATED_VERSION = <masked>"),
]


def _mask_versions(text: str) -> str:
    for pattern, replacement in _VERSION_STAMPS:
        text = pattern.sub(replacement, text)
    return text


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto-fresh")
    env = dict(os.environ)
    env["PYTHON"] = sys.executable
    # protoc-gen-mypy / protoc-gen-mypy_grpc live beside the interpreter in the venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/gen-proto.sh failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return out


def _serialized_descriptor(path: Path) -> bytes:
    """The FileDescriptorProto bytes that a generated *_pb2.py registers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
        ):
            value = ast.literal_eval(node.args[0])
            assert isinstance(value, bytes)
            return value
    raise AssertionError(f"{path}: no AddSerializedFile(...) call found")


def _describe_difference(committed: bytes, fresh: bytes) -> str:
    old = descriptor_pb2.FileDescriptorProto.FromString(committed)
    new = descriptor_pb2.FileDescriptorProto.FromString(fresh)
    lines = []
    for kind in ("message_type", "enum_type", "service"):
        old_items = {item.name: item for item in getattr(old, kind)}
        new_items = {item.name: item for item in getattr(new, kind)}
        for name in sorted(new_items.keys() - old_items.keys()):
            lines.append(f"  {kind} {name}: in corral.proto, missing from corral_pb2.py")
        for name in sorted(old_items.keys() - new_items.keys()):
            lines.append(f"  {kind} {name}: in corral_pb2.py, gone from corral.proto")
        for name in sorted(old_items.keys() & new_items.keys()):
            if old_items[name] != new_items[name]:
                lines.append(f"  {kind} {name}: changed")
    if not lines:
        lines.append("  (file options or ordering differ)")
    return "\n".join(lines)


def test_descriptor_matches_proto(fresh_dir: Path) -> None:
    committed = _serialized_descriptor(PROTO_DIR / "corral_pb2.py")
    fresh = _serialized_descriptor(fresh_dir / "corral_pb2.py")
    if committed != fresh:
        pytest.fail(
            "proto/corral_pb2.py is stale: proto/corral.proto changed and `make proto` "
            "was not run.\n" + _describe_difference(committed, fresh),
            pytrace=False,
        )


@pytest.mark.parametrize("name", GENERATED)
def test_generated_file_is_fresh(fresh_dir: Path, name: str) -> None:
    committed_path = PROTO_DIR / name
    assert committed_path.exists(), f"proto/{name} is missing: run `make proto`"
    committed = _mask_versions(committed_path.read_text())
    fresh = _mask_versions((fresh_dir / name).read_text())
    if committed == fresh:
        return
    diff = difflib.unified_diff(
        committed.splitlines(),
        fresh.splitlines(),
        fromfile=f"proto/{name} (committed)",
        tofile=f"proto/{name} (from corral.proto)",
        lineterm="",
        n=1,
    )
    shown = [line if len(line) <= 160 else line[:160] + "..." for line in list(diff)[:60]]
    pytest.fail(
        f"proto/{name} differs from what scripts/gen-proto.sh generates: run `make proto`.\n"
        + "\n".join(shown),
        pytrace=False,
    )


def test_masks_hide_only_version_stamps() -> None:
    def sample(protobuf: tuple[int, int, int], grpc_version: str, body: str) -> str:
        major, minor, patch = protobuf
        return (
            f"# Protobuf Python Version: {major}.{minor}.{patch}\n"
            "_runtime_version.ValidateProtobufRuntimeVersion(\n"
            "    _runtime_version.Domain.PUBLIC,\n"
            f"    {major},\n    {minor},\n    {patch},\n    '',\n"
            "    'corral/proto/corral.proto'\n)\n"
            f"GRPC_GENERATED_VERSION = '{grpc_version}'\n{body}\n"
        )

    old = _mask_versions(sample((7, 35, 1), "1.85.1", "x = 1"))
    assert old == _mask_versions(sample((8, 0, 12), "1.90.0", "x = 1"))
    assert old != _mask_versions(sample((7, 35, 1), "1.85.1", "x = 2"))
    assert "'corral/proto/corral.proto'" in old
    assert "7" not in old.replace("proto", "")
