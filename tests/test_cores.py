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
