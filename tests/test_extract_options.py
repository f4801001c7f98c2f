"""`extract` checks every option (`ExtractOptions`) before a model loads, plans the backbones once,
and hands `Block` objects to the store and to a sink of the caller's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.errors import ConfigError
from evoked.extract import options as options_mod
from evoked.extract import runner
from evoked.extract.runner import extract
from evoked.extract.sinks import Block
from evoked.features.store import open_store


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for k in range(7):
        make_image(root / f"{k}.jpg", size=(30, 20), color=(40 * k, 100, 200 - 20 * k), seed=k)
    return root


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
        ({"workers": -1}, "--workers -1: use 0"),
        ({"dtype": "float64"}, "--dtype 'float64': use float32 or float16"),
        ({"max_pixels": 0}, "--max-pixels 0: must be at least 1"),
        ({"device": "cdua"}, "--device 'cdua': use auto, cpu, cuda or cuda:N"),
        ({"precision": "half"}, "--precision 'half'"),
        ({"decode": "gpu"}, "--decode 'gpu'"),
        ({"shard": "3/2"}, "--shard '3/2'"),
        ({"weights": ["a.pth"], "backbones": ["resnet18", "tv:mobilenet_v2"]}, "is ambiguous"),
    ],
)
def test_every_option_is_checked_before_a_model_loads(images, tmp_path, monkeypatch, bad, message):
    def no_model(*a, **k):
        raise AssertionError("a model was built before the options were checked")

    monkeypatch.setattr(runner, "create_backbone", no_model)
    kw = {"device": "cpu", "workers": 0, **bad}
    backbones = kw.pop("backbones", ["color"])
    with pytest.raises(ConfigError, match=message):
        extract(f"folder:{images}", tmp_path / "f.h5", backbones, **kw)
    assert not (tmp_path / "f.h5").exists()


def test_an_unknown_option_is_named(images, tmp_path):
    with pytest.raises(TypeError, match="batchsize"):
        extract(f"folder:{images}", tmp_path / "f.h5", ["color"], batchsize=4)


def test_backbones_are_planned_once_and_blocks_reach_a_sink_of_ones_own(images, tmp_path, monkeypatch):
    plans = []
    plan = options_mod.plan_backbones
    monkeypatch.setattr(options_mod, "plan_backbones", lambda *a: plans.append(a) or plan(*a))

    class Collect:
        def __init__(self):
            self.blocks: list[Block] = []

        def write(self, block: Block) -> None:
            self.blocks.append(block)

    sink = Collect()
    out = tmp_path / "f.h5"
    s = extract(f"folder:{images}", out, ["color"], device="cpu", batch_size=3, workers=0, sink=sink)
    assert s.ok == 7 and len(plans) == 1
    assert [b.index for b in sink.blocks] == [0, 1, 2] and all(isinstance(b, Block) for b in sink.blocks)
    rows = np.concatenate([b.rows for b in sink.blocks])
    assert rows.tolist() == list(range(7)) and all(b.ok.all() for b in sink.blocks)
    with open_store(out) as store:  # the store got the same blocks
        stored = store.read("color/stats")
    np.testing.assert_array_equal(np.concatenate([b.features["color/stats"] for b in sink.blocks]), stored)
