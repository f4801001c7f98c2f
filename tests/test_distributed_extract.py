"""Extraction by several processes (torchrun, srun): launch detection, the merged file equals a
single-process run, and a failed or killed rank is completed alone with --shard R/N --resume."""

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_image
from evoked.cli import main
from evoked.errors import ConfigError
from evoked.extract import extract
from evoked.extract.distributed import Launch, detect_launch, first_host, tasks_per_node
from evoked.features.store import OK

BACKBONES = ["color", "tv:mobilenet_v3_small"]
FLAGS = [
    "--backbone",
    "color",
    "--backbone",
    "tv:mobilenet_v3_small",
    "--weights",
    "random",
    "--preprocess",
    "tv:mobilenet_v3_small=resize=40,crop=32",
    "--device",
    "cpu",
    "--batch-size",
    "4",
    "--workers",
    "0",
]

#: A colour backbone that fails on rank FAIL_RANK at its second block: raises, or kills itself.
FLAKY = """
import os, signal
from evoked.extract import register_backbone
from evoked.extract.backbones.color import color

class _Flaky:
    def __init__(self, forward):
        self.forward, self.calls = forward, 0

    def __call__(self, x):
        self.calls += 1
        rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
        if self.calls > 1 and rank is not None and rank == os.environ.get("FAIL_RANK"):
            if os.environ.get("FAIL_HOW") == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("disk on fire")
        return self.forward(x)

@register_backbone("flaky-color", help="colour statistics; rank FAIL_RANK fails at its second block")
def flaky_color(arg, weights):
    bb = color(arg, weights)
    bb.name = bb.spec = "flaky-color"
    bb.module.forward = _Flaky(bb.module.forward)
    return bb
"""

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """In-process runs here are single processes, even when the tests themselves run in a Slurm job."""
    for k in os.environ:
        if k in LAUNCH_VARS or k.startswith("SLURM_"):
            monkeypatch.delenv(k)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without launcher variables (the tests may run inside a Slurm job)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path: Path) -> dict[str, np.ndarray]:
    """Everything a user compares, read with plain h5py."""
    with h5py.File(path, "r") as f:
        out = {
            "id": f["items/id"].asstr()[:],
            "path": f["items/path"].asstr()[:],
            "status": f["items/status"][:],
        }
        for e in f["features"]:
            for o in f["features"][e]:
                out[f"{e}/{o}"] = f["features"][e][o][:]
    return out


def _assert_same(merged: Path, ref: Path) -> None:
    a, b = _read(merged), _read(ref)
    assert a.keys() == b.keys()
    for k in ("id", "path", "status"):
        assert a[k].tolist() == b[k].tolist(), k
    for k in a:
        if "/" in k:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "imgs"
    for k in range(9):
        make_image(root / "warm" / f"{k:02d}.jpg", size=(40, 30), color=(220, 120, 40), seed=k)
        make_image(root / "cold" / f"{k:02d}.jpg", size=(30, 40), color=(30, 60, 200), seed=100 + k)
    return root


@pytest.fixture(scope="module")
def reference(images: Path) -> Path:
    out = images.parent / "single.h5"
    extract(
        f"folder:{images}",
        out,
        BACKBONES,
        weights=["random"],
        preprocess=["tv:mobilenet_v3_small=resize=40,crop=32"],
        device="cpu",
        batch_size=4,
        workers=0,
    )
    return out


@pytest.fixture(scope="module")
def flaky(images: Path) -> str:
    """One file for the module: a plugin loads once per process, by path."""
    path = images.parent / "flaky.py"
    path.write_text(FLAKY)
    return str(path)


# -- launch detection ------------------------------------------------------------------------------
def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "node7", "MASTER_PORT": "29500", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert detect_launch(env) == Launch(3, 4, 1, 2, "torchrun", "node7", 29500)
    assert detect_launch({**env, "WORLD_SIZE": "1", "RANK": "0"}) is None  # one process: a plain run
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        detect_launch({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="rank 4 is not below"):
        detect_launch({**env, "RANK": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        detect_launch({**env, "WORLD_SIZE": "two"})


def test_slurm_srun_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_NUM_NODES": "3",
        "SLURM_STEP_TASKS_PER_NODE": "3(x2),2",
        "SLURM_STEP_NODELIST": "gpu[07-09]",
        "SLURM_JOB_ID": "123456",
        "SLURM_NTASKS": "8",
    }
    launch = detect_launch(env)
    assert launch == Launch(5, 8, 1, 2, "slurm", "gpu07", 15000 + 123456 % 20000)
    assert launch.env() == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(15000 + 123456 % 20000),
    }
    exported = detect_launch({**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert (exported.master_addr, exported.master_port) == ("10.0.0.1", 29400)
    one_node = detect_launch({**env, "SLURM_STEP_NUM_NODES": "1"})
    assert one_node.master_addr == "127.0.0.1"
    with pytest.raises(ConfigError, match="export MASTER_ADDR"):
        detect_launch({k: v for k, v in env.items() if k != "SLURM_STEP_NODELIST"})
    with pytest.raises(ConfigError, match="export MASTER_PORT"):
        detect_launch({k: v for k, v in env.items() if k != "SLURM_JOB_ID"})


def test_no_launch_batch_script_or_one_task_is_a_plain_run():
    assert detect_launch({}) is None
    # inside an sbatch script: SLURM_NTASKS and SLURM_PROCID are set, but srun started no tasks
    batch = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "9"}
    assert detect_launch(batch) is None
    assert detect_launch({**batch, "SLURM_STEP_NUM_TASKS": "1", "SLURM_ARRAY_TASK_ID": "3"}) is None


def test_slurm_host_lists():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("node12,node13") == "node12"
    assert first_host("rack[2-3]-n[001-004]") == "rack2-n001"
    assert first_host("solo") == "solo"
    assert tasks_per_node("2(x3),1", 3) == 1 and tasks_per_node("4", 0) == 4 and tasks_per_node("", 0) == 1


def test_reader_processes_are_shared_by_the_ranks_of_a_node(monkeypatch):
    import torch

    from evoked.extract import distributed

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    launch = Launch(0, 16, 0, 8, "torchrun", "127.0.0.1", 1)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert distributed._default_workers(1000, 64, cuda, launch) == 7  # 64 cores / 8 ranks, less one
    assert distributed._default_workers(10, 64, cuda, launch) == 0  # one block: no readers
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert distributed._default_workers(1000, 64, cuda, launch) == 3  # srun bound 4 cores to the task
    assert distributed._default_workers(1000, 64, cpu, launch) == 0  # CPU: decoded in the main thread


def test_conflicts_are_refused_before_the_processes_wait(images: Path, tmp_path: Path, monkeypatch, capsys):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "f.h5"
    base = ["extract", f"folder:{images}", "--out", str(out), "--backbone", "color", "--device", "cpu", "-q"]
    assert main([*base, "--shard", "0/2"]) == 2
    assert "--shard 0/2 with a launch of 2 processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "19")  # 18 images
    assert main(base) == 2
    assert "19 processes for 18 items" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    (tmp_path / "f.shard-1-of-2.h5").write_bytes(b"")
    assert main(base) == 2
    assert "f.shard-1-of-2.h5 exists; pass --resume" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "f.shard-0-of-2.h5").exists()


# -- real processes --------------------------------------------------------------------------------
def _torchrun(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "evoked", *args]
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=180)


def test_torchrun_two_ranks_equal_one_process(images: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "feats" / "merged.h5"
    done = _torchrun(["extract", f"folder:{images}", "--out", str(out), *FLAGS, "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"merged": true' in done.stdout and done.stdout.count('"merged"') == 1  # rank 0 alone prints
    _assert_same(out, reference)
    with h5py.File(out, "r") as f:
        assert f["features/color/stats"].is_virtual and (f["items/status"][:] == OK).all()
        assert sorted(p.name for p in out.parent.iterdir()) == [
            "merged.h5",
            "merged.shard-0-of-2.h5",
            "merged.shard-1-of-2.h5",
        ]


def test_failed_rank_is_completed_alone_then_merged(
    images: Path, reference: Path, flaky: str, tmp_path: Path, monkeypatch
):
    out = tmp_path / "feats" / "m.h5"
    flags = [*FLAGS[:2], "--plugin", flaky, "--backbone", "flaky-color", *FLAGS[2:]]
    done = _torchrun(["extract", f"folder:{images}", "--out", "feats/m.h5", *flags], tmp_path, FAIL_RANK="1")
    assert done.returncode != 0
    err = done.stderr
    assert "[rank 0/2] ERROR" in err and "1 of 2 processes failed, so feats/m.h5 was not merged" in err
    assert "rank 1 (" in err and "RuntimeError: disk on fire" in err
    assert "rank 1/2 failed on feats/m.shard-1-of-2.h5" in err
    rerun = next(line.strip() for line in err.splitlines() if "--shard 1/2 --resume" in line)
    assert rerun.startswith(
        f"evoked extract folder:{images} --out feats/m.h5 --plugin {flaky} --backbone color"
    )
    assert "evoked features merge feats/m.h5" in err
    assert not out.exists()
    with h5py.File(out.with_name("m.shard-0-of-2.h5"), "r") as f:
        assert (f["items/status"][:] == OK).all()
    # the printed command, run alone, completes the shard; then the merge
    monkeypatch.chdir(tmp_path)
    assert main([*shlex.split(rerun)[1:], "-q"]) == 0
    assert main(["features", "merge", "feats/m.h5"]) == 0
    merged, ref = _read(out), _read(reference)
    assert merged.keys() == ref.keys() | {f"flaky-{k}" for k in ref if k.startswith("color/")}
    for k in merged:
        if "/" in k:  # flaky-color computes what color does
            want = ref[k.removeprefix("flaky-")]
            np.testing.assert_allclose(merged[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            assert merged[k].tolist() == ref[k].tolist(), k


def test_killed_rank_under_srun_then_resume_and_merge(
    images: Path, reference: Path, flaky: str, tmp_path: Path, monkeypatch
):
    """Two tasks as srun starts them (SLURM_* variables, no torchrun); task 1 dies of SIGKILL."""
    port = str(_free_port())
    args = ["extract", f"folder:{images}", "--out", "feats/k.h5", "--plugin", flaky]
    args += ["--backbone", "flaky-color", "--device", "cpu", "--batch-size", "3", "--workers", "0", "-q"]
    procs = []
    for rank in (0, 1):
        env = _clean_env(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NUM_TASKS="2",
            SLURM_STEP_NUM_NODES="1",
            SLURM_STEP_TASKS_PER_NODE="2",
            SLURM_JOB_ID="4242",
            MASTER_PORT=port,
            FAIL_RANK="1",
            FAIL_HOW="kill",
        )
        cmd = [sys.executable, "-m", "evoked", *args, "--dist-timeout", "0.05"]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    try:
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == -9
    assert procs[0].returncode != 0
    err0 = results[0][1].decode()
    assert "rank 0/2: lost contact with the other processes" in err0, err0[-3000:]
    assert "feats/k.h5 was not merged" in err0 and "rank 1: feats/k.shard-1-of-2.h5 has" in err0
    assert "evoked features merge feats/k.h5" in err0
    rerun = next(line.strip() for line in err0.splitlines() if "--shard 1/2 --resume" in line)
    out = tmp_path / "feats" / "k.h5"
    assert not out.exists()
    monkeypatch.chdir(tmp_path)
    assert main([*shlex.split(rerun)[1:], "-q"]) == 0
    assert main(["features", "merge", "feats/k.h5"]) == 0
    merged, ref = _read(out), _read(reference)
    assert merged["id"].tolist() == ref["id"].tolist() and (merged["status"] == OK).all()
    np.testing.assert_allclose(merged["flaky-color/stats"], ref["color/stats"], rtol=1e-6)
