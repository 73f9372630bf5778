"""Programs a test needs from the machine (Debian's ``prometheus`` package: ``prometheus`` and
``promtool``). Where one is missing a developer's run skips the test and says how to install it;
under CI (``CI`` set, as ``.ci/run`` is run, which installs the package) it fails instead, so a
missing install step cannot pass as a green run."""

from __future__ import annotations

import os
import shutil

import pytest


def required_program(name: str, package: str = "prometheus") -> str:
    """The path of ``name``; skip without it, fail without it under CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (apt-get install {package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message + ": required under CI")
    pytest.skip(message)
