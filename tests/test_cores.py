"""The cores a run's threads get: those other processes leave free, counted when the run starts."""

from __future__ import annotations

import os
import subprocess
import sys

from evoked import device
from evoked.extract import cpu


def fake_stat(monkeypatch, busy_others: float, cores: int = 4):
    """/proc/stat as it reads when other processes keep `busy_others` cores busy over the sample."""
    reads = iter([(0, 0), (int(busy_others * 100), cores * 100)])
    monkeypatch.setattr(device, "available_cores", lambda: cores)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(device, "_cpu_jiffies", lambda cpus: next(reads))
    monkeypatch.setattr(device, "_own_ticks", lambda: 0.0)
    monkeypatch.setattr(device.time, "sleep", lambda s: None)


def test_free_cores_leave_out_the_cores_others_keep_busy(monkeypatch):
    for others, free in ((0.0, 4), (0.3, 4), (0.6, 3), (1.2, 3), (2.5, 1), (7.0, 1)):
        fake_stat(monkeypatch, others)
        assert device.free_cores() == free, others


def test_without_proc_stat_every_allowed_core_counts(monkeypatch):
    monkeypatch.setattr(device, "_cpu_jiffies", lambda cpus: None)
    assert device.free_cores(0.0) == device.available_cores()


def test_model_threads_follow_the_free_cores_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "free_cores", lambda: 1)
    assert cpu.model_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cpu, "free_cores", lambda: 99)
    assert cpu.model_threads() == 1


def test_a_busy_process_counts_as_a_taken_core():
    if not os.path.exists("/proc/stat") or device.available_cores() < 2:
        return  # nothing to show on one core or off Linux
    code = (
        "import sys; sys.path.insert(0, 'bench'); from background import BackgroundLoad\n"
        "from evoked.device import available_cores, free_cores\n"
        "with BackgroundLoad(available_cores()):\n    print(free_cores(1.0))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 1  # every core busy: one thread, not a team that waits at barriers


def test_extraction_counts_the_free_cores_once_and_records_what_it_used(tmp_path, monkeypatch):
    import torch

    from conftest import make_image
    from evoked.extract import extract, runner
    from evoked.features.store import open_store

    for k in range(3):
        make_image(tmp_path / "imgs" / f"{k}.jpg", size=(40, 30), seed=k)
    counted, used = [], []
    monkeypatch.setattr(runner, "model_threads", lambda: counted.append(1) or 1)
    monkeypatch.setattr(runner.torch, "set_num_threads", lambda n: used.append(n))
    before = torch.get_num_threads()
    extract(f"folder:{tmp_path / 'imgs'}", tmp_path / "f.h5", ["color"], device="cpu", batch_size=2)
    assert len(counted) == 1 and used == [1, before]  # set for the run, given back after it
    with open_store(tmp_path / "f.h5") as st:
        assert st.runs()[-1]["threads"] == 1
