"""bench/background.py: the busy processes of ``--background-load`` are bounded and always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from background import MAX_PER_CORE, BackgroundLoad, check_count  # noqa: E402
from evoked.device import available_cores  # noqa: E402


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever adopted it to reap it has stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_busy_processes_run_inside_the_block_and_are_stopped_after_it():
    with BackgroundLoad(2) as load:
        pids = load.pids()
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert not any(_alive(p) for p in pids) and load.pids() == []


def test_they_are_stopped_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"), BackgroundLoad(1) as load:
        pids = load.pids()
        raise RuntimeError("boom")
    assert not any(_alive(p) for p in pids)


def test_the_count_is_bounded_by_the_cores():
    assert check_count(0) == 0
    with pytest.raises(ValueError, match="--background-load -1"):
        check_count(-1)
    with pytest.raises(ValueError, match=f"0 to {MAX_PER_CORE * available_cores()}"):
        BackgroundLoad(MAX_PER_CORE * available_cores() + 1)


def test_sigterm_to_the_benchmark_stops_them(tmp_path: Path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO / "bench")!r})
        from background import BackgroundLoad
        with BackgroundLoad(1) as load:
            print(load.pids()[0], flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    assert _alive(pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(pid)


def test_a_busy_process_ends_by_itself_when_its_parent_is_killed():
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO / "bench")!r})
        from background import BackgroundLoad
        load = BackgroundLoad(1).__enter__()
        print(load.pids()[0], flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    for _ in range(600):  # it checks its parent every ~10 ms of spinning (longer on a busy machine)
        if not _alive(pid):
            break
        __import__("time").sleep(0.1)
    assert not _alive(pid)
