"""Layer outputs: every block of a trunk, pooled, in the same pass; stored one dataset per layer."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO, make_image
from evoked.data.decode import load_rgb
from evoked.errors import ConfigError
from evoked.extract import create_backbone, extract
from evoked.extract.backbone import parse_preprocess_overrides, preprocess_batch
from evoked.extract.backbones.clip import write_model_config
from evoked.extract.layers import projection_matrix
from evoked.extract.weights import seeded
from evoked.features.store import open_store

SMALL = "resize=40,crop=32"
PLUGIN = str(REPO / "tests" / "plugins" / "tiny_layers.py")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for k in range(6):
        make_image(root / "a" / f"{k}.jpg", size=(40, 30), color=(200, 60 + 20 * k, 40), seed=k)
    return root


@pytest.fixture(scope="module")
def mobilenet_store(photos: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "m.h5"
    extract(f"folder:{photos}", out, ["tv:mobilenet_v2@pool,layers"], weights=["random"], preprocess=[SMALL],
            device="cpu", precision="fp32", batch_size=4, workers=0)  # fmt: skip
    return out


def _hooked_reference(photos: Path, store: Path) -> dict[str, np.ndarray]:
    """Pooled outputs of each child of ``features``, taken by our own forward hooks."""
    with seeded():
        model = torchvision.models.get_model("mobilenet_v2", weights=None).eval()
    got: dict[str, torch.Tensor] = {}
    for name, child in model.features.named_children():
        child.register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o.mean(dim=(2, 3))))
    with open_store(store) as st:
        paths = [st.root / p for p in st.paths]
    pre = create_backbone("tv:mobilenet_v2", "random", parse_preprocess_overrides(SMALL)).preprocess
    x = [torch.from_numpy(load_rgb(p)).permute(2, 0, 1).contiguous() for p in paths]
    with torch.no_grad():
        model(preprocess_batch(x, pre))
    return {f"layers.features.{k}": v.numpy() for k, v in got.items()}


def test_each_layer_equals_a_forward_hooks_pooled_output(photos: Path, mobilenet_store: Path):
    ref = _hooked_reference(photos, mobilenet_store)
    with open_store(mobilenet_store) as st:
        names = st.resolve_features(["mobilenet_v2/layers"])
        assert names == [f"mobilenet_v2/layers.features.{k}" for k in range(19)]  # by depth, not by name
        for k, name in enumerate(names):
            got = st.read(name)
            want = ref[name.split("/")[1]]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
            info = st.layer_info(name)
            assert info == {"feature": name, "layer": f"features.{k}", "depth": pytest.approx((k + 1) / 19),
                            "dim": want.shape[1]}  # fmt: skip
        assert st.layer_info("mobilenet_v2/pool") is None
        assert st.dataset("mobilenet_v2/layers.features.18").shape == (6, 1280)


def test_layer_dim_is_a_recorded_seeded_sparse_projection(
    photos: Path, mobilenet_store: Path, tmp_path: Path
):
    out = tmp_path / "p.h5"
    extract(f"folder:{photos}", out, ["tv:mobilenet_v2@layers"], weights=["random"], preprocess=[SMALL],
            device="cpu", precision="fp32", batch_size=4, workers=0, layer_dim=8, layer_seed=3)  # fmt: skip
    with open_store(out) as st, open_store(mobilenet_store) as whole:
        assert st.extractors["mobilenet_v2"]["config"]["layer_projection"]["seed"] == 3
        for name in whole.resolve_features(["mobilenet_v2/layers"]):
            x = whole.read(name)
            info = st.layer_info(name)
            assert info["dim"] == 8 and info["source_dim"] == x.shape[1]
            want = x @ projection_matrix(x.shape[1], 8, seed=3)
            np.testing.assert_allclose(st.read(name), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_layer_dim_wider_than_a_layer_and_other_bad_requests(photos: Path, tmp_path: Path):
    with pytest.raises(
        ConfigError, match=r"--layer-dim 20 is larger than layers .*features.1 \(16\).*--layer-dim 16"
    ):
        extract(f"folder:{photos}", tmp_path / "x.h5", ["tv:mobilenet_v2@layers"], weights=["random"],
                device="cpu", workers=0, layer_dim=20)  # fmt: skip
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ConfigError, match="--layer-dim 0"):
        extract(f"folder:{photos}", tmp_path / "x.h5", ["resnet18@layers"], weights=["random"], layer_dim=0)
    with pytest.raises(ConfigError, match="has no output layers"):
        create_backbone("color@layers")


def test_plugin_and_clip_backbones_declare_their_layers(photos: Path, tmp_path: Path):
    out = tmp_path / "t.h5"
    extract(f"folder:{photos}", out, ["tiny-layers@pool,layers"], plugins=[PLUGIN], device="cpu",
            precision="fp32", batch_size=4, workers=0)  # fmt: skip
    with open_store(out) as st:
        names = st.resolve_features(["tiny-layers/layers"])
        assert [st.layer_info(n)["dim"] for n in names] == [6, 10, 12]
        # the last block's pooled output is the backbone's own pool
        np.testing.assert_allclose(st.read(names[-1]), st.read("tiny-layers/pool"), rtol=1e-5)
    clip = write_model_config(tmp_path / "clip-tiny.json")
    bb = create_backbone(f"clip:{clip}@embed,layers", "random")
    assert [ly.name for ly in bb.layers] == ["transformer.resblocks.0", "transformer.resblocks.1"]
    tokens: list[torch.Tensor] = []
    bb.module.model.visual.transformer.resblocks[1].register_forward_hook(lambda m, i, o: tokens.append(o))
    bb.tap_layers()
    with torch.no_grad():
        out = bb.module(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out["layers.transformer.resblocks.1"], tokens[0][:, 0])
    assert out["layers.transformer.resblocks.0"].shape == (2, 64)


def test_layers_off_unless_selected(photos: Path, tmp_path: Path):
    bb = create_backbone("tv:mobilenet_v2", "random", parse_preprocess_overrides(SMALL))
    bb.tap_layers()
    with torch.no_grad():
        out = bb.module(torch.randn(1, 3, 32, 32))
    assert set(out) == {"probs", "pool"}
