"""The one device and precision resolver (`evoked.device`), used alike by extraction, fine-tuning,
the MLP regressor, predict, search and serve; and the OpenMP settings, made where a run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from evoked.device import OPENMP_DEFAULTS, resolve_compute, resolve_device, use_openmp_defaults
from evoked.errors import ConfigError
from evoked.extract import precision as prec_mod
from evoked.regress.mlp import TorchMLPRegressor
from evoked.retrieve import Retriever
from test_finetune import FAST, ds  # noqa: F401  (ds: the fixture)


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch sees one CUDA device (without bf16 unless the test says otherwise)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Tesla T4")
    monkeypatch.setattr(prec_mod, "cuda_bf16_supported", lambda dev: False)


@pytest.mark.parametrize("bad", ["cdua", "gpu", "mps", "cuda:x", ""])
def test_a_bad_device_names_the_value_and_the_fix(bad):
    with pytest.raises(ConfigError, match=rf"--device '{bad}': use auto, cpu, cuda or cuda:N"):
        resolve_device(bad)


def test_cuda_where_torch_sees_none_or_too_few(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is visible to torch; use --device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"cuda:3: torch sees 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("training", [False, True])
def test_auto_never_picks_bf16_on_a_gpu_without_it(fake_gpu, training):
    # fine-tuning's own resolver gave bf16 on any GPU
    assert resolve_compute("cuda", "auto", training=training) == (torch.device("cuda"), "fp16")
    with pytest.raises(ConfigError, match="Tesla T4 has no bfloat16 support; use --precision fp16"):
        resolve_compute("cuda", "bf16", training=training)


@pytest.mark.parametrize("training", [False, True])
def test_bf16_on_the_cpu_is_accepted_alike_and_fp16_refused_alike(monkeypatch, training):
    monkeypatch.setattr(prec_mod, "fast_bf16", lambda: True)
    assert resolve_compute("cpu", "bf16", training=training) == (torch.device("cpu"), "bf16")
    assert resolve_compute("cpu", "fp32", training=training)[1] == "fp32"
    # auto: bf16 for extraction on CPUs with bf16 units, fp32 for training (measured for extraction only)
    assert resolve_compute("cpu", "auto", training=training)[1] == ("fp32" if training else "bf16")
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_compute("cpu", "fp16", training=training)
    with pytest.raises(ConfigError, match="--precision 'half': use one of auto, fp32, bf16, fp16"):
        resolve_compute("cpu", "half", training=training)


def test_finetune_accepts_bf16_on_the_cpu(ds, tmp_path: Path):  # noqa: F811
    from evoked.finetune import finetune

    base = dict(categorical=ds["cat"], dimensional=ds["dim"], mode="one_stage", task="single")
    finetune(out=tmp_path / "run", precision="bf16", **base, **FAST)  # refused before
    assert '"precision": "bf16"' in (tmp_path / "run" / "run.json").read_text()


def test_the_mlp_regressor_and_search_check_their_device(tmp_path: Path):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ConfigError, match="MLP device 'cdua': use auto, cpu, cuda or cuda:N"):
        TorchMLPRegressor(device="cdua").fit(X, y)
    with pytest.raises(ConfigError, match="--device 'cdua'"):
        Retriever(tmp_path / "missing.h5", "color/stats", device="cdua")


def test_importing_evoked_leaves_the_environment_alone():
    code = (
        "import os; before = dict(os.environ)\n"
        "import evoked, evoked.cli, evoked.extract, evoked.regress, evoked.device\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "from evoked.cli import main\n"
        "try:\n    main(['--version'])\n"  # a command sets the OpenMP defaults, first thing
        "except SystemExit:\n    pass\n"
        "print({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')})"
    )
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(OPENMP_DEFAULTS)


def test_openmp_defaults_leave_what_the_user_set(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert use_openmp_defaults() == {"GOMP_SPINCOUNT": "30000"}
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["GOMP_SPINCOUNT"] == "30000"
