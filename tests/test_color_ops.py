"""Colour/texture features: checked against colorsys and straightforward numpy/python references."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from evoked.extract.color_ops import (
    LBP_NEIGHBOURS,
    LBP_UNIFORM_BINS,
    ColorFeatures,
    color_stats,
    hsv_histogram,
    rgb_to_hsv,
    uniform_lbp_histogram,
    valdez_mehrabian,
)


def rand_images(b: int = 2, h: int = 7, w: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def hsv_image(hues, s: float = 1.0, v: float = 1.0) -> torch.Tensor:
    """(1, 3, 1, N) image whose pixels have the given hues."""
    rgb = [colorsys.hsv_to_rgb(h, s, v) for h in hues]
    return torch.tensor(rgb, dtype=torch.float32).T.reshape(1, 3, 1, len(hues))


def constant_image(rgb, h: int = 5, w: int = 6) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).contiguous()


def colorsys_hsv(x: torch.Tensor) -> np.ndarray:
    """Reference HSV of (B, 3, H, W) -> (B, 3, H, W) float64, one pixel at a time."""
    arr = x.double().numpy()
    out = np.zeros_like(arr)
    b, _, h, w = arr.shape
    for i in range(b):
        for y in range(h):
            for xx in range(w):
                out[i, :, y, xx] = colorsys.rgb_to_hsv(*arr[i, :, y, xx])
    return out


# ---------------------------------------------------------------------------------------------- HSV


def test_rgb_to_hsv_matches_colorsys():
    x = rand_images(3, 8, 8, seed=1)
    # pure greys, black, white and channel ties (which sector colorsys picks matters for the hue)
    x[0, :, 0, 0] = 0.5
    x[0, :, 0, 1] = 0.0
    x[0, :, 0, 2] = 1.0
    x[0, :, 0, 3] = torch.tensor([0.7, 0.7, 0.2])
    x[0, :, 0, 4] = torch.tensor([0.2, 0.7, 0.7])
    x[0, :, 0, 5] = torch.tensor([0.7, 0.2, 0.7])
    x[0, :, 0, 6] = torch.tensor([0.3, 0.2, 0.3 - 1e-7])  # red max, hue just below 1 -> wraps
    got = rgb_to_hsv(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    ref = colorsys_hsv(x)
    # hue is circular: compare modulo 1 so 0.9999999 and 0.0 agree
    dh = np.abs(got[:, 0].double().numpy() - ref[:, 0])
    assert np.minimum(dh, 1 - dh).max() < 1e-5
    np.testing.assert_allclose(got[:, 1:].double().numpy(), ref[:, 1:], atol=1e-5, rtol=0)
    assert got[0, 0, 0, :3].tolist() == [0.0, 0.0, 0.0]  # greys: H = 0
    assert got[0, 1, 0, :3].tolist() == [0.0, 0.0, 0.0]  # greys: S = 0
    assert got[0, 2, 0, :3].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert got.min() >= 0 and got.max() <= 1


# ---------------------------------------------------------------------------------------- statistics


def reference_stats(x: torch.Tensor) -> np.ndarray:
    rgb = x.double().numpy().reshape(x.shape[0], 3, -1)
    hsv = colorsys_hsv(x).reshape(x.shape[0], 3, -1)
    theta = 2 * np.pi * hsv[:, 0]
    c, s = np.cos(theta).mean(1), np.sin(theta).mean(1)
    h_mean = np.mod(np.arctan2(s, c) / (2 * np.pi), 1.0)
    h_std = np.sqrt(-2 * np.log(np.hypot(c, s))) / (2 * np.pi)
    return np.concatenate(
        [
            rgb.mean(2),
            rgb.std(2),
            h_mean[:, None],
            hsv[:, 1:].mean(2),
            h_std[:, None],
            hsv[:, 1:].std(2),
        ],
        axis=1,
    )


def test_color_stats_constant_image():
    got = color_stats(constant_image([0.8, 0.4, 0.2]))
    assert got.shape == (1, 12) and got.dtype == torch.float32
    h, s, v = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)
    expected = [0.8, 0.4, 0.2, 0, 0, 0, h, s, v, 0, 0, 0]
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_color_stats_grey_image_hue_is_zero():
    got = color_stats(constant_image([0.3, 0.3, 0.3]))[0]
    assert got[6].item() == 0.0 and got[9].item() == 0.0  # hue mean and std
    assert got[7].item() == 0.0 and got[10].item() == 0.0  # saturation


def test_color_stats_match_numpy_reference():
    x = rand_images(3, 6, 5, seed=2)
    # a mostly-orange image, so the hue mean is well defined and the hue std small
    x[2] = torch.tensor([0.9, 0.5, 0.1]).view(3, 1, 1) + 0.05 * (x[2] - 0.5)
    got = color_stats(x).double().numpy()
    ref = reference_stats(x)
    dh = np.abs(got[:, 6] - ref[:, 6])
    assert np.minimum(dh, 1 - dh).max() < 1e-4
    ref[:, 6] = got[:, 6]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_circular_hue_mean_wraps_around_zero():
    x = hsv_image([0.95] * 4 + [0.05] * 4)
    mean_h, std_h = color_stats(x)[0, [6, 9]].tolist()
    assert min(mean_h, 1 - mean_h) < 1e-5  # ~0.0 (mod 1), not 0.5
    assert 0 <= mean_h < 1
    # all hues are 0.05 from the mean: R = cos(0.1 pi), std = sqrt(-2 ln R) / (2 pi) ~ 0.05
    expected = math.sqrt(-2 * math.log(math.cos(0.1 * math.pi))) / (2 * math.pi)
    assert std_h == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------- histogram


def test_hsv_histogram_parts_sum_to_one():
    x = rand_images(3, seed=3)
    got = hsv_histogram(x, bins=(16, 8, 8))
    assert got.shape == (3, 32) and got.dtype == torch.float32
    for part in got.split([16, 8, 8], dim=1):
        torch.testing.assert_close(part.sum(1), torch.ones(3))
    assert hsv_histogram(x, bins=(4, 3, 2)).shape == (3, 9)


def test_hsv_histogram_matches_numpy_reference():
    x = rand_images(2, seed=4)
    got = hsv_histogram(x, bins=(16, 8, 8)).numpy()
    hsv = colorsys_hsv(x).reshape(2, 3, -1)
    for i in range(2):
        ref = [
            np.histogram(hsv[i, c], bins=n, range=(0, 1))[0] / hsv.shape[2] for c, n in enumerate((16, 8, 8))
        ]
        np.testing.assert_allclose(got[i], np.concatenate(ref), atol=1e-6)


def test_hsv_histogram_constant_image_one_bin_per_part():
    # hue 1/3 (green) -> bin 5 of 16; S = 0.5 -> bin 4 of 8; V = 0.8 -> bin 6 of 8
    got = hsv_histogram(constant_image([0.4, 0.8, 0.4]))[0]
    h, s, v = got.split([16, 8, 8])
    assert h.nonzero().flatten().tolist() == [5] and h[5].item() == 1.0
    assert s.nonzero().flatten().tolist() == [4] and s[4].item() == 1.0
    assert v.nonzero().flatten().tolist() == [6] and v[6].item() == 1.0


def test_hsv_histogram_value_one_lands_in_last_bin():
    # pure red: S = 1 and V = 1 exactly; hue 0 -> first bin
    got = hsv_histogram(constant_image([1.0, 0.0, 0.0]))[0]
    h, s, v = got.split([16, 8, 8])
    assert h[0].item() == 1.0 and s[-1].item() == 1.0 and v[-1].item() == 1.0


# --------------------------------------------------------------------------------------------- PAD


def test_valdez_mehrabian():
    x = rand_images(2, seed=5)
    hsv = colorsys_hsv(x).reshape(2, 3, -1)
    s, v = hsv[:, 1].mean(1), hsv[:, 2].mean(1)
    ref = np.stack([0.69 * v + 0.22 * s, -0.31 * v + 0.60 * s, -0.76 * v + 0.32 * s], axis=1)
    got = valdez_mehrabian(x)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    # white: V = 1, S = 0
    torch.testing.assert_close(
        valdez_mehrabian(constant_image([1.0, 1.0, 1.0]))[0], torch.tensor([0.69, -0.31, -0.76])
    )


# --------------------------------------------------------------------------------------------- LBP


def transitions(code: int) -> int:
    bits = [(code >> k) & 1 for k in range(8)]
    return sum(bits[k] != bits[(k + 1) % 8] for k in range(8))


def reference_lbp_counts(x: torch.Tensor) -> np.ndarray:
    """Pixel-by-pixel uniform LBP bin counts of one (3, H, W) image, written from the definition."""
    r, g, b = x.double().numpy()
    grey = 0.299 * r + 0.587 * g + 0.114 * b
    uniform = [c for c in range(256) if transitions(c) <= 2]
    # top-left, then clockwise: top, top-right, right, bottom-right, bottom, bottom-left, left
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    hist = np.zeros(59)
    h, w = grey.shape
    for y in range(1, h - 1):
        for xx in range(1, w - 1):
            code = sum(int(grey[y + dy, xx + dx] >= grey[y, xx]) << k for k, (dy, dx) in enumerate(ring))
            hist[uniform.index(code) if code in uniform else 58] += 1
    return hist


def test_lbp_table_has_58_uniform_codes_and_one_shared_bin():
    assert len(LBP_UNIFORM_BINS) == 256
    uniform = [c for c in range(256) if transitions(c) <= 2]
    assert len(uniform) == 58
    assert [LBP_UNIFORM_BINS[c] for c in uniform] == list(range(58))
    assert all(LBP_UNIFORM_BINS[c] == 58 for c in range(256) if c not in uniform)
    assert sorted(set(LBP_UNIFORM_BINS)) == list(range(59))
    assert LBP_NEIGHBOURS[0] == (-1, -1) and LBP_NEIGHBOURS[1] == (-1, 0)  # top-left, then clockwise


def test_lbp_matches_pixel_loop_reference():
    x = rand_images(2, 9, 7, seed=6)
    # image 1: a few grey levels only, so many neighbours tie with their centre (>= counts ties as 1)
    levels = torch.randint(0, 3, (9, 7), generator=torch.Generator().manual_seed(7)).float() / 2
    x[1] = levels.expand(3, 9, 7)
    got = uniform_lbp_histogram(x)
    assert got.shape == (2, 59) and got.dtype == torch.float32
    n_interior = 7 * 5
    for i in range(2):
        counts = reference_lbp_counts(x[i])
        # exact: the same number of pixels in every bin
        assert torch.round(got[i] * n_interior).long().tolist() == counts.astype(int).tolist()
        np.testing.assert_allclose(got[i].numpy(), counts / n_interior, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(2))


def test_lbp_constant_image_is_all_code_255():
    got = uniform_lbp_histogram(constant_image([0.2, 0.6, 0.1]))[0]
    assert got[LBP_UNIFORM_BINS[255]].item() == 1.0
    assert LBP_UNIFORM_BINS[255] == 57  # the largest uniform code
    assert got.sum().item() == 1.0


def test_lbp_rejects_too_small_images():
    with pytest.raises(ValueError):
        uniform_lbp_histogram(torch.rand(1, 3, 2, 5))


# ------------------------------------------------------------------------------- batching and dtypes


FUNCTIONS = [color_stats, hsv_histogram, valdez_mehrabian, uniform_lbp_histogram]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_batch_equals_images_alone(fn):
    x = rand_images(4, 6, 8, seed=8)
    x[2] = 0.5  # a constant image in the middle of the batch
    batched = fn(x)
    alone = torch.cat([fn(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=0)


def smooth_images() -> torch.Tensor:
    """Two images of smooth colour ramps around a dominant colour (so hue stats are stable)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 10), indexing="ij")
    a = torch.stack([0.7 + 0.2 * xx, 0.3 + 0.2 * yy, 0.1 + 0.1 * xx * yy])
    b = torch.stack([0.1 + 0.1 * yy, 0.4 + 0.3 * xx, 0.8 - 0.2 * yy])
    return torch.stack([a, b])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_half_inputs_give_float32_close_to_float32(fn, dtype):
    x = smooth_images()
    xh = x.to(dtype)
    got = fn(xh)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fn(xh.float()), atol=0, rtol=0)  # upcast first, then the same ops
    if fn in (color_stats, valdez_mehrabian):
        torch.testing.assert_close(got, fn(x), atol=2e-2, rtol=0)
    else:  # rounding moves a few pixels across bin edges; the distributions stay close
        assert (got - fn(x)).abs().sum(1).max() < 0.5


def test_half_inputs_under_autocast():
    x = smooth_images()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = ColorFeatures()(x)
    ref = ColorFeatures()(x)
    for k in ColorFeatures.OUTPUTS:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k])


# ------------------------------------------------------------------------------------------ module


def test_color_features_shapes_and_values():
    m = ColorFeatures()
    assert list(m.parameters()) == []
    x = rand_images(3, 10, 12, seed=9)
    out = m(x * 1.4 - 0.2)  # out of range: clamped to [0, 1] first
    assert set(out) == set(ColorFeatures.OUTPUTS)
    for k, d in ColorFeatures.OUTPUTS.items():
        assert out[k].shape == (3, d) and out[k].dtype == torch.float32
    xc = (x * 1.4 - 0.2).clamp(0, 1)
    torch.testing.assert_close(out["stats"], color_stats(xc))
    torch.testing.assert_close(out["hsv_hist"], hsv_histogram(xc))
    torch.testing.assert_close(out["pad"], valdez_mehrabian(xc))
    torch.testing.assert_close(out["lbp"], uniform_lbp_histogram(xc))


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        color_stats(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        hsv_histogram(torch.rand(1, 4, 4, 4))
