"""Every writer under a lock, and nothing lost when one is stopped: run folders (regress, finetune),
extract through links, features merge and features export."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, make_image
from evoked.errors import ConfigError
from evoked.extract import extract
from evoked.features.export import NpyWriter, export_features
from evoked.features.lock import identity_lock_path
from evoked.features.merge import merge_shards
from evoked.features.store import OK, open_store
from evoked.regress.runner import run_regress
from storeutil import make_store

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
HOLD = (
    "import sys, time; from evoked.features.lock import output_lock\n"
    "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def store(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    return make_store(tmp_path / "s.h5", {"f/x": x}, valence=5 + x[:, 0], arousal=5 + x[:, 1])


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True)


class _Holder:
    """Another process holding the lock of `out` (as a running writer does)."""

    def __init__(self, out: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=ENV, stdout=subprocess.PIPE,
                                     text=True)  # fmt: skip

    def __enter__(self) -> int:
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"
        return self.proc.pid

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# 3: regress --out R --overwrite: a work folder swapped in at the end; R locked ---------------------
KILL_AT = """
import os, signal, sys
import evoked.regress.runner as r
real = r._save_models
def killed(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would, after models were written
r._save_models = killed
r.run_regress(sys.argv[1], features=["f/x"], out=sys.argv[2], cv=3, overwrite=True, models="knn")
"""

KILL_IN_SWAP = """
import os, signal, sys
import evoked.runfolder as rf
calls = []
real = os.rename
def rename(a, b):
    calls.append(1)
    if len(calls) == 2:  # the old run renamed aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
rf.os.rename = rename
import evoked.regress.runner as r
r.run_regress(sys.argv[1], features=["f/x"], out=sys.argv[2], cv=3, overwrite=True, models="knn")
"""


def test_3_a_killed_overwrite_leaves_the_previous_run_whole(store, tmp_path):
    out = tmp_path / "R"
    run_regress(store, features=["f/x"], out=out, cv=3, models="ridge")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    killed = _python(KILL_AT, str(store), str(out))
    assert killed.returncode == -9, killed.stderr
    assert _snapshot(out) == before  # the finished run, untouched
    assert list(tmp_path.glob(".R.partial-*"))  # the stopped run's work, beside it
    result = run_regress(store, features=["f/x"], out=out, cv=3, overwrite=True, models="knn")
    assert result.out == out and not list(tmp_path.glob(".R.*"))  # the leftovers are gone
    assert json.loads((out / "run.json").read_text())["models"] == ["knn"]
    assert json.loads((out / "run.json").read_text())["name"] == "R"
    assert sorted(p.name for p in (out / "models").iterdir() if p.suffix == ".joblib") == ["knn.joblib"]
    assert (out / "notes.txt").read_text() == "mine"  # the user's file moved to the new run


def test_3_a_kill_inside_the_swap_puts_the_previous_run_back(store, tmp_path):
    out = tmp_path / "R"
    run_regress(store, features=["f/x"], out=out, cv=3, models="ridge")
    before = _snapshot(out)
    killed = _python(KILL_IN_SWAP, str(store), str(out))
    assert killed.returncode == -9, killed.stderr
    assert not out.exists() and list(tmp_path.glob(".R.old-*"))
    with pytest.raises(ConfigError, match="already exists"):  # put back first, so it is still refused
        run_regress(store, features=["f/x"], out=out, cv=3, models="knn")
    assert _snapshot(out) == before and not list(tmp_path.glob(".R.*"))


def test_3_a_second_writer_into_one_out_is_refused(store, tmp_path):
    out = tmp_path / "R"
    run_regress(store, features=["f/x"], out=out, cv=3, models="ridge")
    before = _snapshot(out)
    with _Holder(out) as pid:
        with pytest.raises(ConfigError, match=rf"being written by process {pid}.*another --out"):
            run_regress(store, features=["f/x"], out=out, cv=3, overwrite=True, models="knn")
    assert _snapshot(out) == before


# 4: extract's lock is keyed on the real file -----------------------------------------------------
def _slow_extract(images: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "evoked", "extract", f"folder:{images}", "--out", str(out), "--plugin",
           str(REPO / "tests" / "plugins" / "slow_color.py"), "--backbone", "slow-color", "--device", "cpu",
           "--batch-size", "2", "--workers", "0", "-q"]  # fmt: skip
    env = {**ENV, "SLOW_SECONDS": "0.25"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_4_links_to_a_store_being_written_are_refused(tmp_path):
    for k in range(10):
        make_image(tmp_path / "imgs" / "a" / f"{k}.jpg", seed=k)
    images, out = tmp_path / "imgs", tmp_path / "s.h5"
    proc = _slow_extract(images, out)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not ((p := identity_lock_path(out)) and p.exists()):
            time.sleep(0.02)
        (tmp_path / "link.h5").symlink_to(out)
        os.link(out, tmp_path / "hard.h5")
        for other in (tmp_path / "link.h5", tmp_path / "hard.h5"):
            with pytest.raises(ConfigError, match=rf"being written by process {proc.pid}"):
                extract(f"folder:{images}", other, ["color"], device="cpu", workers=0, resume=True)
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_store(out) as s:
        assert (s.status == OK).all() and len(s.runs()) == 1  # one writer, one run recorded


# 5: features merge takes the lock and keeps an existing OUT ---------------------------------------
def test_5_merge_is_locked_and_keeps_an_existing_store(tmp_path):
    for k in range(6):
        make_image(tmp_path / "imgs" / "a" / f"{k}.jpg", seed=k)
    for i in range(2):
        extract(f"folder:{tmp_path / 'imgs'}", tmp_path / "m.h5", ["color"], device="cpu", workers=0,
                shard=f"{i}/2")  # fmt: skip
    out = tmp_path / "m.h5"
    make_store(out, {"f/x": np.ones((3, 2))})  # a finished store of its own at OUT
    before = out.read_bytes()
    with pytest.raises(ConfigError, match=r"already exists.*--overwrite"):
        merge_shards(out)
    with _Holder(out) as pid:  # e.g. extract writing it
        with pytest.raises(ConfigError, match=rf"being written by process {pid}"):
            merge_shards(out, overwrite=True)
    assert out.read_bytes() == before
    merge_shards(out, overwrite=True)
    merge_shards(out)  # merging the same shards again refreshes the merged view without --overwrite
    with open_store(out) as s:
        assert s.counts()["ok"] == 6


# 6: features export ------------------------------------------------------------------------------
def test_6_stale_work_folders_of_dead_exports_are_removed(store, tmp_path):
    out = tmp_path / "exp"
    stale = tmp_path / ".exp.partial-999999999"  # a pid no process has
    (stale / "img_emb").mkdir(parents=True)
    (stale / "img_emb" / "img_emb_0.npy").write_bytes(b"\0" * 1000)
    export_features(store, ["f/x"], out=out)
    assert not stale.exists() and (out / "_export.json").is_file()


def test_6_out_as_a_symlink(store, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    export_features(store, ["f/x"], out=tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "_export.json").is_file()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"symlink to .*nowhere.*does not exist"):
        export_features(store, ["f/x"], out=tmp_path / "dangling")
    assert not (tmp_path / "nowhere").exists()


def test_6_two_exports_into_one_out(store, tmp_path):
    out = tmp_path / "exp"
    with _Holder(out) as pid:
        with pytest.raises(ConfigError, match=rf"being written by process {pid}"):
            export_features(store, ["f/x"], out=out)
    assert not out.exists()


def test_6_a_full_disk_is_a_clear_error_and_leaves_nothing(store, tmp_path, monkeypatch):
    def full(self, meta, x):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(NpyWriter, "append", full)
    with pytest.raises(ConfigError, match=r"disk of .* is full.*another disk"):
        export_features(store, ["f/x"], out=tmp_path / "exp")
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob(".exp.*"))


def test_6_float16_refuses_values_it_cannot_hold(tmp_path):
    x = np.ones((4, 3))
    x[2, 1] = 1e6
    store = make_store(tmp_path / "s.h5", {"f/x": x})
    with pytest.raises(ConfigError, match=r"f/x of item 'item00002.jpg' is 1e\+06.*--dtype float32"):
        export_features(store, ["f/x"], out=tmp_path / "exp", dtype="float16")
    assert not (tmp_path / "exp").exists()
    export_features(store, ["f/x"], out=tmp_path / "exp", dtype="float16", normalize=True)  # the fix works
    with h5py.File(store) as f:
        assert f["features/f/x"][2, 1] == 1e6  # the store itself is untouched
