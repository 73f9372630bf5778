"""The pure engine's boundary (stream/core) is a lint rule that bites: import-linter's contracts in
pyproject.toml refuse an import of Kafka, Postgres, Faust, YAML, the settings, the codec or any
process module from stream.core. Checked on a copy of the tree with one forbidden import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_the_contracts() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("forbidden", "contract"),
    [
        ("import aiokafka", "stream.core is not allowed to import aiokafka"),
        ("import yaml", "stream.core is not allowed to import yaml"),
        ("from stream.settings import Settings", "stream.core is not allowed to import stream.settings"),
        ("from schemas.codec import Codec", "stream.core is not allowed to import schemas"),
        ("from stream.matcher import Matcher", "stream.core is not allowed to import stream.matcher"),
    ],
)
def test_a_forbidden_import_in_core_fails_the_lint(tmp_path: Path, forbidden: str, contract: str) -> None:
    for name in ("stream", "schemas", "topics"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    rules = tmp_path / "stream" / "core" / "rules.py"
    rules.write_text(rules.read_text() + f"\n{forbidden}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert contract in result.stdout
