"""Low-level colour and texture features of images, computed in batch with torch tensor ops.

Every function takes ``x`` of shape (B, 3, H, W), RGB in [0, 1], on any device and in any float dtype,
and returns float32 tensors (B, D) on ``x``'s device. Work is done in float32 with autocast disabled,
and only with tensor ops (no numpy, no per-pixel python), so CPU and CUDA run the same computation.

The features and where they come from:

- RGB/HSV means and standard deviations, with circular statistics for hue
  (Fisher, *Statistical Analysis of Circular Data*, 1993; HSV as in Smith, SIGGRAPH 1978).
- HSV histograms, the classic global colour descriptor (Swain & Ballard, IJCV 1991).
- Pleasure/Arousal/Dominance from brightness and saturation
  (Valdez & Mehrabian, J. Exp. Psychol. Gen. 1994; used by Machajdik & Hanbury, ACM MM 2010).
- Uniform local binary patterns, 8 neighbours at radius 1 (Ojala, Pietikainen & Maenpaa, TPAMI 2002).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "LBP_NEIGHBOURS",
    "LBP_UNIFORM_BINS",
    "ColorFeatures",
    "color_stats",
    "hsv_histogram",
    "rgb_to_hsv",
    "uniform_lbp_histogram",
    "valdez_mehrabian",
]

_TWO_PI = 2.0 * math.pi

#: (dy, dx) of LBP neighbour bit k: the 3x3 ring, starting at the top-left neighbour, clockwise.
LBP_NEIGHBOURS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (1, 0),
    (1, -1),
    (0, -1),
)


def _circular_transitions(code: int, bits: int = 8) -> int:
    """Number of 0/1 changes going once round the circular bit string of `code`."""
    return sum(((code >> k) & 1) != ((code >> ((k + 1) % bits)) & 1) for k in range(bits))


def _uniform_lbp_table() -> tuple[int, ...]:
    """code -> bin: uniform codes (<= 2 transitions) get bins 0..57 in code order, the rest bin 58."""
    uniform = [c for c in range(256) if _circular_transitions(c) <= 2]
    shared = len(uniform)
    bin_of = {c: i for i, c in enumerate(uniform)}
    return tuple(bin_of.get(c, shared) for c in range(256))


#: The 256-entry LBP code -> histogram bin lookup table (58 uniform bins + 1 shared bin).
LBP_UNIFORM_BINS: tuple[int, ...] = _uniform_lbp_table()
_LBP_NBINS = max(LBP_UNIFORM_BINS) + 1  # 59

F = TypeVar("F", bound=Callable[..., Any])


def _float32(fn: F) -> F:
    """Check that the first argument is (B, 3, H, W) and run `fn` on it in float32 with autocast off.

    Half-precision inputs are upcast (exactly), so results depend only on the input values.
    """

    @functools.wraps(fn)
    def wrapper(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got dtype {x.dtype}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x.float(), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _batched_histogram(idx: Tensor, nbins: int) -> Tensor:
    """Normalised histograms of integer bin indices idx (B, N) in [0, nbins): (B, nbins) float32.

    One bincount for the whole batch: image b's indices are offset by b * nbins.
    """
    b, n = idx.shape
    offsets = torch.arange(b, device=idx.device, dtype=idx.dtype).unsqueeze(1) * nbins
    counts = torch.bincount((idx + offsets).reshape(-1), minlength=b * nbins)
    return counts.reshape(b, nbins).float() / max(n, 1)


# ---------------------------------------------------------------------------------------------- HSV


@_float32
def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB (B, 3, H, W) in [0, 1] -> HSV (B, 3, H, W), each channel in [0, 1].

    Same convention as ``colorsys.rgb_to_hsv``: H is a fraction of the colour circle (0 = red),
    S = (max - min) / max, V = max channel; greys (max == min) have H = 0 and S = 0.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = maxc - minc
    grey = delta <= 0
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)  # avoid 0/0 (masked out below)
    safe_max = torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    s = torch.where(grey, torch.zeros_like(delta), delta / safe_max)
    # Sector by which channel is the max; ties resolve r, then g, then b, as colorsys does.
    h_r = (g - b) / safe_delta
    h_g = 2.0 + (b - r) / safe_delta
    h_b = 4.0 + (r - g) / safe_delta
    h = torch.where(r == maxc, h_r, torch.where(g == maxc, h_g, h_b))
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(grey | (h >= 1.0), torch.zeros_like(h), h)  # float32 remainder of -tiny can be 1.0
    return torch.stack((h, s, maxc), dim=1)


# ---------------------------------------------------------------------------------------- statistics


def _circular_mean_std(h: Tensor) -> tuple[Tensor, Tensor]:
    """Circular mean in [0, 1) and circular std sqrt(-2 ln R) / (2 pi) of hues h (B, N) in [0, 1].

    1 - R is computed around the mean direction (mean of 2 sin^2(d/2)), which avoids the float32
    cancellation of 1 - |mean vector| that would make a constant hue's std ~1e-4 instead of ~0.
    R is kept >= ~1e-3 so the std stays finite when the hues cancel out exactly.
    """
    theta = h * _TWO_PI
    mu = torch.atan2(torch.sin(theta).mean(dim=1), torch.cos(theta).mean(dim=1))  # (B,), in (-pi, pi]
    d = theta - mu.unsqueeze(1)
    one_minus_c = (2.0 * torch.sin(d / 2.0).square()).mean(dim=1)  # 1 - mean cos(d)
    s = torch.sin(d).mean(dim=1)  # ~0 by construction, kept for exactness
    one_minus_r2 = (2.0 * one_minus_c - one_minus_c.square() - s.square()).clamp(0.0, 1.0 - 1e-6)
    std = torch.sqrt(-torch.log1p(-one_minus_r2)) / _TWO_PI  # -2 ln R = -ln(R^2)
    mean = torch.remainder(mu / _TWO_PI, 1.0)
    mean = torch.where(mean >= 1.0, torch.zeros_like(mean), mean)
    return mean, std


def _color_stats(rgb: Tensor, hsv: Tensor) -> Tensor:
    rgb = rgb.flatten(2)  # (B, 3, N)
    hsv = hsv.flatten(2)
    h_mean, h_std = _circular_mean_std(hsv[:, 0])
    sv = hsv[:, 1:]
    return torch.cat(
        (
            rgb.mean(dim=2),
            rgb.std(dim=2, correction=0),
            h_mean.unsqueeze(1),
            sv.mean(dim=2),
            h_std.unsqueeze(1),
            sv.std(dim=2, correction=0),
        ),
        dim=1,
    )


@_float32
def color_stats(x: Tensor) -> Tensor:
    """Per-image means and population standard deviations of R, G, B, H, S, V: (B, 12).

    Order: ``[mean_r, mean_g, mean_b, std_r, std_g, std_b, mean_h, mean_s, mean_v, std_h, std_s, std_v]``.

    Hue is an angle, so its mean is the circular mean (direction of the mean unit vector
    (cos 2 pi h, sin 2 pi h), mapped back to [0, 1)) and its std is the circular std sqrt(-2 ln R) / (2 pi),
    R being the mean resultant length, so it is in hue units (fractions of the circle). Every pixel
    counts, greys with their colorsys hue of 0, so a grey image has hue mean 0 and hue std 0.
    The hue std is capped (at ~0.6) for hues that cancel out exactly (R -> 0).
    """
    return _color_stats(x, rgb_to_hsv(x))


# ---------------------------------------------------------------------------------------- histogram


def _hsv_histogram(hsv: Tensor, bins: Sequence[int]) -> Tensor:
    parts = []
    for c, n in enumerate(bins):
        v = hsv[:, c].flatten(1)
        # floor(v * n); values exactly 1.0 (and anything rounding up to n) go in the last bin
        idx = (v * n).long().clamp_(0, n - 1)
        parts.append(_batched_histogram(idx, n))
    return torch.cat(parts, dim=1)


@_float32
def hsv_histogram(x: Tensor, bins: Sequence[int] = (16, 8, 8)) -> Tensor:
    """Separate normalised histograms of H, S and V, concatenated: (B, sum(bins)).

    Each part has equal-width bins over [0, 1] and sums to 1; a value of exactly 1.0 is in the last bin.
    """
    bins = tuple(int(n) for n in bins)
    if len(bins) != 3 or min(bins) < 1:
        raise ValueError(f"bins must be three positive counts for H, S, V, got {bins}")
    return _hsv_histogram(rgb_to_hsv(x), bins)


# --------------------------------------------------------------------------------------------- PAD


def _valdez_mehrabian(hsv: Tensor) -> Tensor:
    s = hsv[:, 1].flatten(1).mean(dim=1)
    v = hsv[:, 2].flatten(1).mean(dim=1)
    return torch.stack((0.69 * v + 0.22 * s, -0.31 * v + 0.60 * s, -0.76 * v + 0.32 * s), dim=1)


@_float32
def valdez_mehrabian(x: Tensor) -> Tensor:
    """Pleasure, Arousal, Dominance from mean brightness V and mean saturation S: (B, 3).

    ``P = 0.69 V + 0.22 S``, ``A = -0.31 V + 0.60 S``, ``D = -0.76 V + 0.32 S`` with V, S in [0, 1]
    (Valdez & Mehrabian 1994, as used by Machajdik & Hanbury 2010).
    """
    return _valdez_mehrabian(rgb_to_hsv(x))


# --------------------------------------------------------------------------------------------- LBP


def _grey(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B: (B, H, W)."""
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


@_float32
def uniform_lbp_histogram(x: Tensor) -> Tensor:
    """59-bin histogram of uniform LBP codes (8 neighbours, radius 1) of the grey image: (B, 59).

    Grey is 0.299 R + 0.587 G + 0.114 B. Bit k of a pixel's code is 1 when neighbour k >= the centre,
    neighbours taken on the 3x3 ring starting at the top-left one and going clockwise
    (see ``LBP_NEIGHBOURS``). The 58 uniform codes (at most 2 circular 0/1 transitions) get bins 0..57
    in increasing code order; all other codes share bin 58 (see ``LBP_UNIFORM_BINS``). Only interior
    pixels are coded (the 1-pixel border is dropped); the histogram sums to 1. Needs H, W >= 3.
    """
    b, _, h, w = x.shape
    if h < 3 or w < 3:
        raise ValueError(f"LBP needs images of at least 3 x 3 pixels, got {h} x {w}")
    grey = _grey(x)
    centre = grey[:, 1 : h - 1, 1 : w - 1]
    code = torch.zeros(centre.shape, dtype=torch.long, device=x.device)
    for k, (dy, dx) in enumerate(LBP_NEIGHBOURS):
        neighbour = grey[:, 1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
        code |= (neighbour >= centre).long() << k
    table = torch.tensor(LBP_UNIFORM_BINS, dtype=torch.long, device=x.device)
    return _batched_histogram(table[code.reshape(b, -1)], _LBP_NBINS)


# ------------------------------------------------------------------------------------------ module


class ColorFeatures(torch.nn.Module):
    """All of the above as one parameter-free module: images -> {output name: (B, dim) float32}.

    ``stats`` = color_stats, ``hsv_hist`` = hsv_histogram (16/8/8 bins), ``pad`` = valdez_mehrabian,
    ``lbp`` = uniform_lbp_histogram. Inputs are clamped to [0, 1] first.
    """

    OUTPUTS: dict[str, int] = {"stats": 12, "hsv_hist": 32, "pad": 3, "lbp": 59}
    HSV_BINS: tuple[int, int, int] = (16, 8, 8)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self._features(x.clamp(0.0, 1.0))

    @staticmethod
    @_float32
    def _features(x: Tensor) -> dict[str, Tensor]:
        hsv = rgb_to_hsv(x)  # shared by stats, histogram and PAD
        return {
            "stats": _color_stats(x, hsv),
            "hsv_hist": _hsv_histogram(hsv, ColorFeatures.HSV_BINS),
            "pad": _valdez_mehrabian(hsv),
            "lbp": uniform_lbp_histogram(x),
        }
