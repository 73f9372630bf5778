"""The built wheel is a working install: it ships the migrations, and its `cashback migrate` creates
the schema in an empty database (before, the wheel held no SQL and migrated nothing).

The wheel is built from a copy of the tree and installed without dependencies into a new virtual
environment, whose dependencies come from the project's environment through a path file: the
package itself can only come from the wheel."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.integration.conftest import REPO_ROOT, fresh_database

pytestmark = pytest.mark.integration


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, cwd=cwd, env=env)


def test_the_wheel_ships_its_migrations_and_migrates_an_empty_database(tmp_path: Path, postgres_url: str) -> None:
    source = tmp_path / "source"
    for name in ("stream", "schemas", "topics"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    built = _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(source))
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("cashback_stream-*.whl")
    shipped = sorted(Path(name).name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".sql"))
    in_tree = sorted(path.name for path in (REPO_ROOT / "stream" / "store" / "migrations").glob("*.sql"))
    assert shipped == in_tree and shipped

    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv)).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel))
    assert installed.returncode == 0, installed.stderr
    where = _run(str(python), "-c", "import stream; print(stream.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    database = fresh_database(postgres_url)
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database}
    migrated = _run(str(venv / "bin" / "cashback"), "migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    async def applied() -> list[str]:
        connection = await asyncpg.connect(database)
        try:
            return [row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        finally:
            await connection.close()

    assert asyncio.run(applied()) == in_tree
