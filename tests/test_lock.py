"""What a fresh machine installs is what was tested: requirements.lock.

The lock pins every package of the runtime, the test and bench extras and the build, with
hashes (`make lock` writes it, `make install` installs it). These tests hold the running
environment to it, and the lock to the ranges of pyproject.toml, so that a dependency added
to pyproject.toml without a new lock, or a package upgraded by hand, fails here.
`make test-latest` runs the suite on the newest releases instead and skips the first check.
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# `name==version ; marker \` opening each entry; hashes and comments follow on their lines.
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)"
    r"(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def locked() -> dict[str, tuple[Version, Marker | None]]:
    """Package name -> (version, marker) of every pin in the lock."""
    pins: dict[str, tuple[Version, Marker | None]] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            marker = Marker(match["marker"]) if match["marker"] else None
            pins[canonicalize_name(match["name"])] = (Version(match["version"]), marker)
    return pins


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml: dependencies, every extra and the build."""
    with PYPROJECT.open("rb") as file:
        project = tomllib.load(file)
    texts = [
        *project["project"]["dependencies"],
        *(text for extra in project["project"]["optional-dependencies"].values() for text in extra),
        *project["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def test_every_locked_entry_has_a_version_and_hashes() -> None:
    text = LOCK.read_text(encoding="utf-8")
    pins = locked()
    assert len(pins) > 50, "requirements.lock holds almost nothing: was it written by `make lock`?"
    # Each pin is followed by at least one hash; pip --require-hashes refuses the lock otherwise.
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    for entry in entries[1:]:
        assert "--hash=sha256:" in entry, f"requirements.lock: no hash for {entry.splitlines()[0]}"


@pytest.mark.skipif(
    os.environ.get("LOYALTY_TEST_LATEST") == "1",
    reason="make test-latest installs the newest releases, not the lock",
)
def test_the_installed_packages_are_exactly_the_locked_versions() -> None:
    wrong = []
    for name, (version, marker) in sorted(locked().items()):
        if marker is not None and not marker.evaluate():
            continue  # another platform's package (pywin32, colorama, ...)
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {version}, not installed")
            continue
        if installed != version:
            wrong.append(f"{name}: locked {version}, installed {installed}")
    assert not wrong, "the environment is not the lock (run `make install`):\n" + "\n".join(wrong)


def test_the_lock_satisfies_every_range_of_pyproject() -> None:
    pins = locked()
    problems = []
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{requirement}: the lock has {pins[name][0]}")
        for extra in requirement.extras:  # psycopg[binary], redis[hiredis]
            needed = metadata.requires(requirement.name) or []
            for text in needed:
                inner = Requirement(text)
                if inner.marker is not None and inner.marker.evaluate({"extra": extra}):
                    if inner.marker.evaluate({"extra": ""}):
                        continue  # not an extra's requirement
                    if canonicalize_name(inner.name) not in pins:
                        problems.append(f"{requirement}: {inner.name} not in the lock")
    assert not problems, "pyproject.toml changed without `make lock`:\n" + "\n".join(problems)
