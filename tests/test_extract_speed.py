"""The fast paths of extraction: threads, memory format, precision per backbone, batched resize,
CLIP similarities in fp32, CUDA fallbacks (through stand-ins), and bench/gpu_check.py without a GPU."""

import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, make_image
from evoked.errors import ConfigError
from evoked.extract import cpu as cpu_mod
from evoked.extract import create_backbone, extract, runner
from evoked.extract import precision as prec_mod
from evoked.extract.backbone import Preprocess, parse_preprocess_overrides, preprocess_batch, resize_crop
from evoked.extract.backbones.clip import write_model_config

SMALL = "resize=40,crop=32"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return str(write_model_config(tmp_path_factory.mktemp("clip") / "clip-tiny.json"))


def _images(k: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sizes = [(30, 50), (30, 50), (44, 36), (30, 50), (44, 36), (61, 47)]
    return [
        torch.randint(0, 256, (3, *sizes[i % len(sizes)]), generator=g, dtype=torch.uint8) for i in range(k)
    ]


def test_clip_similarities_are_fp32_under_bf16_autocast(tiny_clip):
    bb = create_backbone(f"clip:{tiny_clip}", "random")
    x = preprocess_batch(_images(), bb.preprocess)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb.module(x)
    scale = bb.module.model.logit_scale.exp().float()
    emb = out["embed"].float()
    for name, text in (("scene", bb.module.scene_text), ("emotion", bb.module.emotion_text)):
        want = torch.softmax(scale * emb.double() @ text.double().T, dim=1)
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name].double(), want, atol=1e-4, rtol=0)


def test_same_size_images_resized_together_give_the_per_image_values():
    imgs = _images()
    for pre in (Preprocess(40, 32, interpolation="bicubic"), Preprocess(36, 36, mode="squash")):
        alone = torch.cat([resize_crop([im], pre) for im in imgs])
        assert torch.equal(resize_crop(imgs, pre), alone)


def test_cnns_run_channels_last_on_the_cpu_within_fp32_rounding():
    bb = create_backbone("resnet18", "random", parse_preprocess_overrides(SMALL))
    imgs = _images()
    with torch.inference_mode():
        want = bb.module(preprocess_batch(imgs, bb.preprocess))["pool"].numpy()
        runner.place_backbones([bb], torch.device("cpu"))
        assert next(bb.module.parameters()).is_contiguous(memory_format=torch.channels_last)
        got = runner.run_backbones(imgs, [bb], torch.device("cpu"), None)["resnet18/pool"]
    # oneDNN's NHWC kernels sum in another order: the same numbers to fp32 rounding, not bit for bit
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_convnets_and_vits_are_told_apart(tiny_clip):
    assert cpu_mod.is_convnet(create_backbone("resnet18", "random").module)
    assert not cpu_mod.is_convnet(create_backbone(f"clip:{tiny_clip}", "random").module)


def _precision_run(tmp_path: Path, tiny_clip: str, precision: str, out: Path | None = None, **kw):
    root = tmp_path / "imgs"
    for k in range(6):
        make_image(root / "a" / f"{k}.jpg", size=(40, 30), seed=k)
    out = out or tmp_path / f"{precision}.h5"
    s = extract(
        f"folder:{root}",
        out,
        ["resnet18", f"clip:{tiny_clip}", "color"],
        weights=["random"],
        preprocess=[f"resnet18={SMALL}"],
        device="cpu",
        precision=precision,
        batch_size=4,
        **kw,
    )
    with h5py.File(out, "r") as f:
        got = {name: f["features"][name].attrs["precision"] for name in f["features"]}
        run_precision = f.attrs["precision"]
        clip_embed = f["features"]["clip-clip-tiny"]["embed"][:]
    return s, run_precision, got, clip_embed


def test_cpu_bf16_converts_vits_auto_follows_cpu_auto_bf16_vit_and_both_are_recorded(
    tmp_path: Path, tiny_clip, monkeypatch
):
    monkeypatch.setattr(prec_mod, "fast_bf16", lambda: True)
    s, run_p, got, bf16_embed = _precision_run(tmp_path, tiny_clip, "bf16")
    assert s.ok == 6 and s.precision == "bf16" and run_p == "bf16"
    assert got == {"resnet18": "bf16", "clip-clip-tiny": "bf16", "color": "fp32"}
    s, run_p, got, auto_embed = _precision_run(tmp_path, tiny_clip, "auto")
    assert run_p == ("bf16" if prec_mod.CPU_AUTO_BF16 else "fp32")
    assert (
        got["clip-clip-tiny"] == ("bf16" if prec_mod.CPU_AUTO_BF16_VIT else "fp32") and got["color"] == "fp32"
    )
    _, _, _, fp32_embed = _precision_run(tmp_path, tiny_clip, "fp32")
    assert np.array_equal(auto_embed, bf16_embed if prec_mod.CPU_AUTO_BF16_VIT else fp32_embed)
    monkeypatch.setattr(prec_mod, "CPU_AUTO_BF16_VIT", False)
    _, _, got, auto_embed = _precision_run(tmp_path, tiny_clip, "auto", out=tmp_path / "auto-off.h5")
    assert got["clip-clip-tiny"] == "fp32" and np.array_equal(auto_embed, fp32_embed)
    cos = (bf16_embed * fp32_embed).sum(1)  # both L2-normalised
    assert not np.array_equal(bf16_embed, fp32_embed) and cos.min() > 0.99


def test_a_vit_in_bf16_weights_keeps_its_text_tower_and_prompts_in_fp32(tiny_clip):
    bb = create_backbone(f"clip:{tiny_clip}", "random")
    runner.place_backbones([bb], torch.device("cpu"), precisions={bb.name: "bf16"})
    assert bb.weights_dtype == torch.bfloat16
    visual = bb.module.model.visual
    assert {p.dtype for n, p in visual.named_parameters() if "ln_" not in n} >= {torch.bfloat16}
    assert {p.dtype for n, p in visual.named_parameters() if "ln_" in n} == {torch.float32}  # open_clip's way
    assert bb.module.scene_text.dtype == torch.float32
    assert bb.module.model.token_embedding.weight.dtype == torch.float32
    with torch.inference_mode():
        out = runner.run_backbones(_images(), [bb], torch.device("cpu"), {bb.name: torch.bfloat16})
    assert out[f"{bb.name}/embed"].dtype == np.float32 and np.isfinite(out[f"{bb.name}/embed"]).all()


def test_resume_refuses_a_vit_precision_that_differs_from_the_first_run(
    tmp_path: Path, tiny_clip, monkeypatch
):
    monkeypatch.setattr(prec_mod, "fast_bf16", lambda: True)
    monkeypatch.setattr(prec_mod, "CPU_AUTO_BF16_VIT", False)  # a store of an earlier auto: ViTs in fp32
    out = tmp_path / "f.h5"
    _precision_run(tmp_path, tiny_clip, "auto", out=out)
    with pytest.raises(
        ConfigError, match="clip-clip-tiny was computed in fp32, this run would compute it in bf16"
    ):
        _precision_run(tmp_path, tiny_clip, "bf16", out=out, resume=True)


def test_batch_norms_fold_into_convolutions_within_fp32_rounding_and_keep_the_hooks():
    from evoked.extract.fold import fold_batch_norms

    x = preprocess_batch(_images(), Preprocess(40, 32))
    for spec in ("resnet18", "tv:mobilenet_v2"):
        bb = create_backbone(spec, "random")
        with torch.inference_mode():
            want = bb.module(x)
        assert fold_batch_norms(bb.module) > 0
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.module.modules())
        with torch.inference_mode():
            got = bb.module(x)
        assert set(got) == set(want)  # pool (head hook) and, for ResNets, stages (layer hooks)
        for k in want:
            assert (got[k] - want[k]).abs().max() <= 1e-5 * want[k].abs().max(), (spec, k)


def test_folding_leaves_what_it_cannot_fold_as_it_was():
    from torch import nn

    from evoked.extract.fold import fold_batch_norms

    class Shared(nn.Module):  # one conv feeding a BN and something else: not a clean pair
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    m = Shared().eval()
    assert fold_batch_norms(m) == 0 and isinstance(m.bn, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(Shared().train())


def test_cpu_auto_precision_follows_the_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec_mod, "fast_bf16", lambda: False)
    assert prec_mod.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(prec_mod, "fast_bf16", lambda: True)
    assert prec_mod.resolve_precision("auto", cpu) == ("bf16" if prec_mod.CPU_AUTO_BF16 else "fp32")
    assert prec_mod.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        prec_mod.resolve_precision("fp16", cpu)


def test_gpu_without_bf16_falls_back_to_fp16_with_a_message(monkeypatch, caplog):
    monkeypatch.setattr(prec_mod, "cuda_bf16_supported", lambda dev: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Tesla T4")
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="evoked.extract.precision"):
        assert prec_mod.resolve_precision("auto", cuda) == "fp16"
    assert "Tesla T4 has no bfloat16 support" in caplog.text
    with pytest.raises(ConfigError, match="no bfloat16 support"):
        prec_mod.resolve_precision("bf16", cuda)
    assert prec_mod.resolve_precision("fp32", cuda) == "fp32"
    monkeypatch.setattr(prec_mod, "cuda_bf16_supported", lambda dev: True)
    assert prec_mod.resolve_precision("auto", cuda) == "bf16"


def test_models_get_the_cores_and_readers_follow_the_affinity(monkeypatch):
    monkeypatch.setattr(runner, "available_cores", lambda: 6)
    monkeypatch.setattr(runner, "model_threads", lambda: 6)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert runner.default_workers(1000, 64, cuda) == 5  # the affinity (6 cores), not os.cpu_count()
    assert runner.default_workers(10, 64, cuda) == 0
    assert runner.default_workers(1000, 64, cpu) == 0  # CPU: decoded in the main thread
    assert runner.cpu_threads(0) == 6 and runner.cpu_threads(2) == 4


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench/gpu_check.py would run for real")
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0]


def test_bench_extract_compares_with_a_plain_and_a_tuned_loop_run_in_their_own_processes(tmp_path: Path):
    root = tmp_path / "imgs"
    for k in range(72):  # more than the tuned loop's batch of 64: its first batch is not timed
        make_image(root / f"{k}.jpg", size=(48, 40), seed=k)
    cmd = [sys.executable, str(REPO / "bench" / "extract.py"), "--images", str(root), "--n", "72"]
    cmd += ["--batch-size", "8", "--backbone", "tv:mobilenet_v2+color", "--json", "--background-load", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (res,) = __import__("json").loads(r.stdout)["results"]
    assert res["precisions"]["color"] == "fp32" and set(res["precisions"]) == {"mobilenet_v2", "color"}
    assert res["plain_img_s"] > 0 and res["vs_plain"] == round(res["e2e_img_s"] / res["plain_img_s"], 2)
    assert res["tuned_img_s"] > 0 and res["vs_tuned"] == round(res["e2e_img_s"] / res["tuned_img_s"], 2)
    assert __import__("json").loads(r.stdout)["background_load"] == 1
