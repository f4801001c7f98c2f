"""Extraction: backbones, the runner, failures, resume after kill -9, shards, decode paths."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import EMOTION6, MOBILENET, REPO, make_image, needs_emotion6, needs_mobilenet
from evoked.cli import main
from evoked.errors import ConfigError
from evoked.extract import create_backbone, extract, list_backbones
from evoked.extract.backbone import Preprocess, parse_preprocess_overrides, preprocess_batch
from evoked.extract.backbones.clip import write_model_config
from evoked.extract.options import plan_backbones
from evoked.extract.reader import apply_orientation, decode_jpegs_on_device
from evoked.features.merge import merge_shards
from evoked.features.store import OK, PENDING, open_store

SMALL = "resize=40,crop=32"
PLUGIN = str(REPO / "tests" / "plugins" / "slow_color.py")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return str(write_model_config(tmp_path_factory.mktemp("clip") / "clip-tiny.json"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """24 small JPEGs in two categories plus three broken files."""
    root = tmp_path / "imgs"
    for k in range(12):
        make_image(root / "warm" / f"{k:02d}.jpg", size=(40, 30), color=(220, 120, 40), seed=k)
        make_image(root / "cold" / f"{k:02d}.jpg", size=(30, 40), color=(30, 60, 200), seed=100 + k)
    return root


def _add_broken(root: Path) -> None:
    (root / "warm" / "zz_empty.jpg").write_bytes(b"")
    (root / "cold" / "zz_text.jpg").write_text("not an image")
    good = (root / "warm" / "00.jpg").read_bytes()
    (root / "cold" / "zz_cut.jpg").write_bytes(good[: len(good) // 2])


def _features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {f"{e}/{o}": f["features"][e][o][:] for e in f["features"] for o in f["features"][e]}


# -- backbones -----------------------------------------------------------------------------------
def test_every_registered_backbone_builds_and_runs(tiny_clip):
    x = [
        torch.randint(0, 255, (3, 30, 50), dtype=torch.uint8),
        torch.randint(0, 255, (3, 44, 36), dtype=torch.uint8),
    ]
    for spec in list_backbones():
        if spec.startswith("clip:"):
            spec = f"clip:{tiny_clip}"
        bb = create_backbone(
            spec, "random", None if spec.startswith(("clip", "color")) else parse_preprocess_overrides(SMALL)
        )
        with torch.no_grad():
            out = bb.module(preprocess_batch(x, bb.preprocess))
        assert set(bb.default_outputs) <= set(out), spec
        for name in bb.default_outputs:
            assert out[name].shape == (2, bb.outputs[name]), (spec, name)
            assert torch.isfinite(out[name]).all(), (spec, name)
        if "probs" in out:
            torch.testing.assert_close(out["probs"].sum(1), torch.ones(2))


def test_resnet_stages_and_output_selection():
    bb = create_backbone("resnet18@pool,stages", "random", {"resize": 40, "crop": 32})
    assert bb.active_outputs == ("pool", "stages") and bb.outputs["stages"] == 64 + 128 + 256 + 512
    with pytest.raises(ConfigError, match="has no output logits"):
        create_backbone("resnet18@logits", "random")


def test_random_weights_are_reproducible(tiny_clip):
    a = create_backbone("resnet18", "random").module.state_dict()
    b = create_backbone("resnet18", "random").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(
        create_backbone(f"clip:{tiny_clip}", "random").module.scene_text,
        create_backbone(f"clip:{tiny_clip}", "random").module.scene_text,
    )


def test_unknown_backbone_and_bad_specs():
    with pytest.raises(ConfigError, match="Did you mean resnet50"):
        create_backbone("resnet5O", "random")
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        create_backbone("tv:resnet_9000", "random")
    with pytest.raises(ConfigError, match="needs an argument"):
        create_backbone("clip", "random")
    with pytest.raises(ConfigError, match="no such file"):
        create_backbone("resnet18", "/no/such/weights.pth")


def test_offline_default_weights_name_the_file_and_flags(monkeypatch, tmp_path, tiny_clip):
    monkeypatch.setenv("EVOKED_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet18", "default")
    msg = str(e.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights PATH" in msg and "--weights random" in msg
    import evoked.extract.backbones.clip as clip_mod

    monkeypatch.setattr(clip_mod, "_cached_pretrained", lambda cfg: None)
    with pytest.raises(ConfigError, match="not in the local cache.*--weights random"):
        create_backbone("clip:ViT-B-32:openai", "default")


def test_weights_file_that_does_not_fit(tmp_path):
    torch.save(create_backbone("resnet18", "random").module.model.state_dict(), tmp_path / "r18.pth")
    create_backbone("resnet18", str(tmp_path / "r18.pth"))  # fits
    with pytest.raises(ConfigError, match="do not fit the architecture"):
        create_backbone("resnet34", str(tmp_path / "r18.pth"))


def test_plan_weights_and_preprocess_per_backbone():
    plans = plan_backbones(
        ["resnet18", "tv:mobilenet_v2", "color"],
        ["random", "tv:mobilenet_v2=default"],
        ["resize=40,crop=32", "tv:mobilenet_v2=mean=0.5,std=0.5,rotate=180"],
    )
    by = {p.parsed.text: p for p in plans}
    assert by["resnet18"].weights == "random" and by["tv:mobilenet_v2"].weights == "default"
    assert by["color"].preprocess == {}  # colour keeps its own geometry
    assert by["tv:mobilenet_v2"].preprocess == {
        "resize": 40,
        "crop": 32,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "rotate180": True,
    }
    with pytest.raises(ConfigError, match="ambiguous"):
        plan_backbones(["resnet18", "resnet34"], [__file__])
    with pytest.raises(ConfigError, match="not a backbone of this run"):
        plan_backbones(["resnet18"], [], ["resnet50=resize=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_preprocess_overrides("size=3")


def test_preprocess_resizes_crops_and_rotates():
    img = torch.zeros(3, 20, 40, dtype=torch.uint8)
    img[:, :, :20] = 255  # left half white
    pre = Preprocess(resize=10, crop=10)
    x = preprocess_batch([img], pre)
    assert x.shape == (1, 3, 10, 10) and x[0, 0, 5, 0] > 0.9 and x[0, 0, 5, 9] < 0.1
    flipped = preprocess_batch([img], Preprocess(resize=10, crop=10, rotate180=True))
    torch.testing.assert_close(flipped, x.flip(-2, -1))
    squash = preprocess_batch([img], Preprocess(resize=8, crop=8, mode="squash"))
    assert squash.shape == (1, 3, 8, 8) and squash[0, 0, 0, 0] > 0.9 and squash[0, 0, 0, 7] < 0.1


# -- the runner ----------------------------------------------------------------------------------
def test_extract_records_every_failure(images: Path, tmp_path: Path, capsys):
    _add_broken(images)
    out = tmp_path / "x.h5"
    argv = [
        "extract",
        f"folder:{images}",
        "--out",
        str(out),
        "--backbone",
        "resnet18",
        "--backbone",
        "color",
        "--weights",
        "random",
        "--device",
        "cpu",
        "--preprocess",
        SMALL,
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "27 items" in text and "24 ok, 3 failed" in text and "zz_empty.jpg: empty file" in text
    with open_store(out) as s:
        assert s.counts() == {"pending": 0, "ok": 24, "failed": 3}
        errors = s.errors()
        assert set(errors) == {"warm/zz_empty.jpg", "cold/zz_text.jpg", "cold/zz_cut.jpg"}
        assert "not a recognised image format" in errors["cold/zz_text.jpg"]
        x = s.read(["resnet18/pool", "color/stats"])
        ok = s.status == OK
        assert x.shape == (27, 512 + 12) and np.isfinite(x[ok]).all() and np.isnan(x[~ok]).all()
        # colour means separate the two categories
        stats = s.read("color/stats")
        cats = s.labels()["category"]
        assert stats[(cats == "warm") & ok, 0].mean() > 0.7 > 0.2 > stats[(cats == "cold") & ok, 0].mean()
        with h5py.File(out, "r") as f:  # failed rows are NaN for plain h5py readers too
            assert np.isnan(f["features/color/stats"][np.flatnonzero(~ok)]).all()
    assert main([*argv]) == 2  # the file exists and neither --resume nor --overwrite was given
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--strict"]) == 1


def test_resume_refuses_other_settings(images: Path, tmp_path: Path, capsys):
    out = tmp_path / "x.h5"
    base = [
        "extract",
        f"folder:{images}",
        "--out",
        str(out),
        "--backbone",
        "color",
        "--device",
        "cpu",
        "--workers",
        "0",
        "-q",
    ]
    assert main(base) == 0
    assert main([*base, "--resume"]) == 0  # nothing left to do
    assert "this run 0" in capsys.readouterr().out
    assert main([*base, "--backbone", "resnet18", "--weights", "random", "--resume"]) == 2
    assert "resume with the same --backbone flags" in capsys.readouterr().err


def _reference(images: Path, out: Path, batch: int = 4) -> Path:
    extract(
        f"folder:{images}",
        out,
        ["resnet18", "slow-color"],
        weights=["random"],
        preprocess=[SMALL],
        plugins=[PLUGIN],
        device="cpu",
        batch_size=batch,
        workers=0,
    )
    return out


@pytest.mark.parametrize("when", ["halfway", "early"])
def test_kill_9_then_resume_gives_identical_features(images: Path, tmp_path: Path, when: str):
    ref = _reference(images, tmp_path / "ref.h5")
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "evoked",
        "extract",
        f"folder:{images}",
        "--out",
        str(out),
        "--plugin",
        PLUGIN,
        "--backbone",
        "resnet18",
        "--backbone",
        "slow-color",
        "--weights",
        "random",
        "--preprocess",
        SMALL,
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "-q",
    ]
    env = {**os.environ, "SLOW_SECONDS": "0.3"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if when == "early" and (out.exists() or out.with_name(out.name + ".partial").exists()):
                break
            if when == "halfway" and out.exists():
                with h5py.File(out, "r", locking=False) as f:
                    if (f["items/status"][:] == OK).sum() >= 8:
                        break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    if when == "halfway":
        with h5py.File(out, "r") as f:  # readable, partly done
            status = f["items/status"][:]
            assert (status == OK).sum() >= 8 and (status == PENDING).sum() > 0
    assert (
        main(
            [
                "extract",
                f"folder:{images}",
                "--out",
                str(out),
                "--plugin",
                PLUGIN,
                "--backbone",
                "resnet18",
                "--backbone",
                "slow-color",
                "--weights",
                "random",
                "--preprocess",
                SMALL,
                "--device",
                "cpu",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--resume",
                "-q",
            ]
        )
        == 0
    )
    a, b = _features(ref), _features(out)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with open_store(out) as s:
        assert s.counts()["ok"] == 24 and len(s.runs()) >= (2 if when == "halfway" else 1)


def test_shards_merge_into_the_single_run(images: Path, tmp_path: Path):
    ref = _reference(images, tmp_path / "ref.h5")
    for i in range(2):
        extract(
            f"folder:{images}",
            tmp_path / "s.h5",
            ["resnet18", "slow-color"],
            weights=["random"],
            preprocess=[SMALL],
            plugins=[PLUGIN],
            device="cpu",
            batch_size=4,
            workers=0,
            shard=f"{i}/2",
        )
    with pytest.raises(ConfigError, match="missing"):
        merge_shards(tmp_path / "partial.h5", [tmp_path / "s.shard-0-of-2.h5"])
    assert main(["features", "merge", str(tmp_path / "s.h5")]) == 0
    a, b = _features(ref), _features(tmp_path / "s.h5")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with h5py.File(tmp_path / "s.h5", "r") as f:  # plain h5py reads the virtual datasets
        assert f["features/resnet18/pool"].is_virtual and f["items/status"][:].tolist() == [OK] * 24
        with h5py.File(ref, "r") as g:
            assert f["items/id"].asstr()[:].tolist() == g["items/id"].asstr()[:].tolist()


def test_device_jpeg_path_matches_cpu_decode(images: Path, tmp_path: Path):
    """The batched torchvision JPEG path (nvJPEG on CUDA) run on the CPU, against PIL decoding."""
    a = extract(
        f"folder:{images}",
        tmp_path / "a.h5",
        ["resnet18"],
        weights=["random"],
        preprocess=[SMALL],
        device="cpu",
        decode="cpu",
        workers=0,
    )
    b = extract(
        f"folder:{images}",
        tmp_path / "b.h5",
        ["resnet18"],
        weights=["random"],
        preprocess=[SMALL],
        device="cpu",
        decode="device",
        workers=0,
    )
    assert a.ok == b.ok == 24 and b.decode == "device"
    fa, fb = _features(tmp_path / "a.h5")["resnet18/pool"], _features(tmp_path / "b.h5")["resnet18/pool"]
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cos.min() > 0.999


def test_device_jpeg_fallback_reports_reasons():
    good = Image.new("RGB", (8, 6), (10, 20, 30))
    import io

    buf = io.BytesIO()
    good.save(buf, "JPEG")
    data = buf.getvalue()
    blobs = [
        torch.frombuffer(bytearray(data), dtype=torch.uint8),
        torch.frombuffer(bytearray(data[:40]), dtype=torch.uint8),
    ]
    out = decode_jpegs_on_device(blobs, [1, 1], ["good.jpg", "cut.jpg"], torch.device("cpu"), 10**8)
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (3, 6, 8)
    assert isinstance(out[1], str) and ("truncated" in out[1] or "corrupt" in out[1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_tensors_matches_pil(orientation):
    rng = np.random.default_rng(orientation)
    arr = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    img.getexif()[0x0112] = orientation
    from PIL import ImageOps

    expected = np.asarray(ImageOps.exif_transpose(img))
    got = apply_orientation(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_clip_extraction_and_text_search(images: Path, tmp_path: Path, tiny_clip, capsys):
    out = tmp_path / "c.h5"
    assert (
        main(
            [
                "extract",
                f"folder:{images}",
                "--out",
                str(out),
                "--backbone",
                f"clip:{tiny_clip}",
                "--weights",
                "random",
                "--device",
                "cpu",
                "--workers",
                "0",
                "-q",
            ]
        )
        == 0
    )
    with open_store(out) as s:
        emb = s.read("clip-clip-tiny/embed")
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(s.read("clip-clip-tiny/scene").sum(1), 1, atol=1e-5)
        labels = s.dataset("clip-clip-tiny/scene").attrs["labels"]
        assert len(labels) == 365 and "bakery shop" in list(labels)
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                str(out),
                "--feature",
                "clip-clip-tiny/embed",
                "--text",
                "a sunny beach",
                "-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    import json

    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert main(["search", str(out), "--feature", "clip-clip-tiny/scene", "--text", "beach"]) == 2


@needs_mobilenet
@needs_emotion6
def test_offline_mobilenet_weights_name_the_right_objects(tmp_path: Path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("joy/6.jpg", "joy/159.jpg"):  # king penguins; a daisy (checked by eye)
        (root / name.replace("/", "_")).write_bytes((EMOTION6 / "images" / name).read_bytes())
    common = [
        "extract",
        f"folder:{root}",
        "--backbone",
        "tv:mobilenet_v2",
        "--weights",
        str(MOBILENET),
        "--device",
        "cpu",
        "--workers",
        "0",
        "-q",
    ]
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "m.h5"),
                "--preprocess",
                "resize=224,crop=224,mean=0.5,std=0.5,rotate=180",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "noflip.h5"),
                "--preprocess",
                "resize=224,crop=224,mean=0.5,std=0.5",
            ]
        )
        == 0
    )
    with open_store(tmp_path / "m.h5") as s, open_store(tmp_path / "noflip.h5") as n:
        labels = list(s.dataset("mobilenet_v2/probs").attrs["labels"])
        p, q = s.read("mobilenet_v2/probs"), n.read("mobilenet_v2/probs")
        top = {i: labels[k] for i, k in zip(s.ids, p.argmax(1))}
        assert top == {"joy_6.jpg": "king penguin", "joy_159.jpg": "daisy"}
        assert (p.max(1) > 0.9).all() and (q.max(1) < p.max(1)).all()  # without the flip it is worse
        assert s.extractors["mobilenet_v2"]["weights_sha256"]


def test_search_by_id_equals_brute_force(images: Path, tmp_path: Path, capsys):
    import json

    out = tmp_path / "x.h5"
    extract(
        f"folder:{images}", out, ["resnet18"], weights=["random"], preprocess=[SMALL], device="cpu", workers=0
    )
    assert main(["index", str(out), "--feature", "resnet18/pool", "--kind", "flat"]) == 0
    capsys.readouterr()
    with open_store(out) as s:
        x = s.read("resnet18/pool")
        ids = s.ids
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for q in (0, 13):
        assert (
            main(["search", str(out), "--feature", "resnet18/pool", "--id", ids[q], "-k", "5", "--json"]) == 0
        )
        hits = json.loads(capsys.readouterr().out)["hits"]
        sims = xn @ xn[q]
        sims[q] = -np.inf
        expected = np.argsort(-sims, kind="stable")[:5]
        assert [h["id"] for h in hits] == [ids[i] for i in expected]
        np.testing.assert_allclose([h["score"] for h in hits], sims[expected], rtol=1e-5)
    # an image query is extracted exactly as the store was: the item finds itself first
    assert (
        main(
            [
                "search",
                str(out),
                "--feature",
                "resnet18/pool",
                "--image",
                str(images / ids[3]),
                "-k",
                "1",
                "--json",
            ]
        )
        == 0
    )
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["id"] == ids[3] and hit["score"] > 0.9999
