"""Weights: ``default`` (the library's pretrained weights and cache), a local file, or ``random``.

Offline, ``default`` without a cached copy fails with a message naming the file it looked for and
the flags to pass. ``random`` is an explicit opt-in for tests and smoke runs: a fixed seed makes
the same model every time, so a store extracted with random weights can still be queried later.
Set ``EVOKED_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) to never attempt a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

from evoked.errors import ConfigError
from evoked.extract.backbone import WeightsInfo

log = logging.getLogger(__name__)

RANDOM_SEED = 0
_FLAGS = "--weights PATH (a local file) or --weights random (a smoke run, no pretrained features)"


def offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("EVOKED_OFFLINE", "HF_HUB_OFFLINE")
    )


def weights_kind(spec: str) -> str:
    """``default``, ``random`` or ``file`` (a path that must exist)."""
    if spec in ("default", "random"):
        return spec
    if not Path(spec).expanduser().is_file():
        raise ConfigError(
            f"--weights {spec!r}: no such file; use default, random or a path to a weights file"
        )
    return "file"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def seeded(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_info() -> WeightsInfo:
    return WeightsInfo("random", f"random init (seed {RANDOM_SEED})")


def file_info(path: str) -> WeightsInfo:
    p = Path(path).expanduser().resolve()
    return WeightsInfo("file", str(p), str(p), sha256_of(p))


def load_state_dict(path: str) -> dict:
    """A state dict from a checkpoint file (plain, or nested under 'state_dict' / 'model')."""
    try:
        obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ConfigError(f"--weights {path!r}: cannot load it as a torch checkpoint ({e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigError(f"--weights {path!r}: expected a state dict, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(module: torch.nn.Module, state: dict, source: str) -> None:
    """Strict load with a readable error listing what does not fit."""
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[:3]})")
    if problems:
        raise ConfigError(
            f"weights {source} do not fit the architecture: {'; '.join(problems)}. "
            "Check that the file belongs to this backbone."
        )


def torchvision_cached_file(url: str) -> Path:
    """Where torch.hub keeps a downloaded torchvision checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_torchvision(url: str, what: str) -> Path:
    """The cached checkpoint for `url`, downloading it only when online."""
    target = torchvision_cached_file(url)
    if target.is_file():
        return target
    if offline():
        raise ConfigError(
            f"pretrained weights for {what} are not in the local cache: looked for {target}. "
            f"Offline, download {url} there (or set TORCH_HOME), or pass {_FLAGS}."
        )
    log.info("downloading %s to %s", url, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as e:
        raise ConfigError(
            f"pretrained weights for {what} are not in the local cache ({target}) and the download of {url} "
            f"failed ({e}). Put the file there, or pass {_FLAGS}."
        ) from e
    return target
