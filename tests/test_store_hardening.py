"""The store under concurrent use: each test is one numbered case of the hardening issue (13-16)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, make_image
from evoked.cli import main
from evoked.errors import ConfigError
from evoked.extract import extract
from evoked.features.lock import lock_path, output_lock
from evoked.features.store import OK, PENDING, open_store
from evoked.retrieve import build_store_index

PLUGIN = str(REPO / "tests" / "plugins" / "slow_color.py")


@pytest.fixture
def images(tmp_path) -> Path:
    for k in range(12):
        make_image(tmp_path / "imgs" / ("a" if k % 2 else "b") / f"{k}.jpg", seed=k)
    return tmp_path / "imgs"


def _slow_run(images: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "evoked", "extract", f"folder:{images}", "--out", str(out)]
    cmd += ["--plugin", PLUGIN, "--backbone", "slow-color", "--device", "cpu", "--batch-size", "2"]
    cmd += ["--workers", "0", "-q", *extra]
    env = {**os.environ, "SLOW_SECONDS": "0.25", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _whole_blocks(status: np.ndarray, x: np.ndarray, block: int) -> None:
    """ok rows have their features; a block is all pending or all done."""
    assert np.isfinite(x[status == OK]).all()
    for b in range(0, len(status), block):
        assert len(set((status[b : b + block] == PENDING).tolist())) == 1


# 13 --------------------------------------------------------------------------------------------
def test_13_readers_during_a_write(images, tmp_path, capsys):
    out = tmp_path / "s.h5"
    proc = _slow_run(images, out)
    seen, during = [], 0
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if not out.exists():
                time.sleep(0.02)
                continue
            for kw in ({}, {"swmr": True}):
                with h5py.File(out, "r", **kw) as f:  # plain h5py, as another program would
                    status = f["items/status"][:]
                    _whole_blocks(status, f["features/slow-color/hsv_hist"][:], 2)
                    seen.append(int((status == OK).sum()))
            with open_store(out) as s:
                _whole_blocks(s.status, s.read("slow-color/hsv_hist"), 2)
            assert main(["features", "info", str(out)]) == 0
            during += proc.poll() is None
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, proc.stderr.read()
    capsys.readouterr()
    assert during >= 3 and 0 < max(seen[: 2 * during])  # several reads while the run wrote
    assert any(0 < n < 12 for n in seen)  # some of them in the middle of it


# 14 --------------------------------------------------------------------------------------------
def test_14_a_second_writer_is_refused_with_the_holders_pid(images, tmp_path):
    out = tmp_path / "s.h5"
    proc = _slow_run(images, out)
    try:
        deadline = time.time() + 60
        while not out.exists() and time.time() < deadline:
            time.sleep(0.02)
        for kw in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(ConfigError, match=rf"being written by process {proc.pid}"):
                extract(f"folder:{images}", out, ["color"], device="cpu", workers=0, **kw)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_store(out) as s:  # run A's work is whole
        assert (s.status == OK).all()
    # a dead holder does not block: the kernel drops the lock with the process
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from evoked.features.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"process {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out) as p:
        assert p == lock_path(out) and p.read_text() == str(os.getpid())
        with pytest.raises(ConfigError, match="by this process"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()  # removed when released


# 15 --------------------------------------------------------------------------------------------
def test_15_resume_checks_every_option_that_changes_a_row(images, tmp_path, caplog):
    out = tmp_path / "s.h5"
    run = dict(device="cpu", workers=0, batch_size=4)
    extract(f"folder:{images}", out, ["color"], **run)
    with pytest.raises(ConfigError, match=r"--max-pixels 178956970; this run asks for --max-pixels 1000"):
        extract(f"folder:{images}", out, ["color"], resume=True, max_pixels=1000, **run)
    with pytest.raises(ConfigError, match=r"--dtype float32; this run asks for --dtype float16"):
        extract(f"folder:{images}", out, ["color"], resume=True, dtype="float16", **run)
    with caplog.at_level(logging.WARNING):
        s = extract(f"folder:{images}", out, ["color"], resume=True, **{**run, "batch_size": 8})
    assert s.processed == 0 and "--batch-size 8 does not apply on --resume" in caplog.text


# 16 --------------------------------------------------------------------------------------------
def test_16_a_rerun_removes_temporaries_of_dead_processes(tmp_path):
    out = tmp_path / "s.h5"
    make_image(tmp_path / "imgs" / "a" / "0.jpg")
    make_image(tmp_path / "imgs" / "a" / "1.jpg", seed=1)
    extract(f"folder:{tmp_path / 'imgs'}", out, ["color"], device="cpu", workers=0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    index = out.with_name("s.color-hsv_hist.faiss")
    stale = [
        index.with_name(f"{index.name}.tmp-{dead.pid}-abcd1234"),
        index.with_name(f"{index.name}.json.tmp-{dead.pid}-abcd1234"),
    ]
    live = index.with_name(f"{index.name}.tmp-{os.getppid()}-beefbeef")  # a process still running
    for p in (*stale, live):
        p.write_bytes(b"half an index")
    path, _ = build_store_index(out, "color/hsv_hist")
    assert path == index and path.is_file()
    assert not any(p.exists() for p in stale) and live.exists()
