"""Which systems a report's figures show, which of them are one system twice, and their colours.

- `--systems A,B,...` picks and orders them (names or shell patterns: ``va/*``); by default the
  best-ranked system of each model family, and every fine-tuned network whatever its rank.
- Systems with identical predictions (``two-stage/ridge`` fitted exactly like ``va/ridge``) are
  drawn once, named ``A = B``, and the report says so.
- A system's colour comes from its name alone (a hash into a fixed palette), so a system keeps its
  colour from one report to the next; only when two systems drawn side by side hash alike does the
  later name (in sorted order) take the next free colour.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evoked.errors import ConfigError

# Okabe & Ito first (told apart with the common colour-vision deficiencies), then Tableau's darker
# tones; no yellow or light grey (weak on white)
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
    "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#1F3A93", "#B22222",
    "#2E8B57", "#8B4513",
)  # fmt: skip


def system_color(name: str) -> str:
    """The colour of a system name: the same name gets the same colour in every report."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return PALETTE[int.from_bytes(digest[:4], "big") % len(PALETTE)]


def colors_for(names: Sequence[str]) -> dict[str, str]:
    """Each name's `system_color`; when two names of one figure hash alike, the later name (in sorted
    order) takes the next free palette colour, so a figure never shows two systems in one colour."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(set(names)):
        color = system_color(name)
        if color in used and len(used) < len(PALETTE):
            k = PALETTE.index(color)
            while PALETTE[k % len(PALETTE)] in used:
                k += 1
            color = PALETTE[k % len(PALETTE)]
        out[name] = color
        used.add(color)
    return out


def family(model: str) -> str:
    """A model's family: its name without a curve suffix (``ridge``, ``two_stage:svr``, ``finetune:...``)."""
    return model.split("@", 1)[0]


def is_finetuned(entry: Mapping, run_kinds: Mapping[str, str]) -> bool:
    return run_kinds.get(entry["run"]) == "finetune" or str(entry["model"]).startswith("finetune")


def choose_systems(
    ranked: Sequence[Mapping], run_kinds: Mapping[str, str], wanted: Sequence[str] | None
) -> list[str]:
    """The system names to plot, in order: `wanted` (names or patterns), else the default choice."""
    names = [str(s["system"]) for s in ranked]
    if wanted:
        chosen: list[str] = []
        for w in wanted:
            hits = [n for n in names if n == w or fnmatch.fnmatchcase(n, w)]
            if not hits:
                raise ConfigError(
                    f"--systems {w!r} names no system of the report; the systems are: {', '.join(names)}"
                )
            chosen += [h for h in hits if h not in chosen]
        return chosen
    seen: set[str] = set()
    chosen = []
    for s in ranked:  # best first
        fam = family(str(s["model"]))
        if is_finetuned(s, run_kinds) or fam not in seen:
            chosen.append(str(s["system"]))
            seen.add(fam)
    return chosen


@dataclass
class Shown:
    """One system as a figure draws it: its label, the systems it stands for, its predictions."""

    label: str
    members: list[str]
    pred: np.ndarray


def merge_identical(names: Sequence[str], preds: Mapping[str, np.ndarray]) -> tuple[list[Shown], list[str]]:
    """Draw systems with identical predictions (NaN where NaN, values within 1e-9) once; notes say so."""
    shown: list[Shown] = []
    for name in names:
        p = preds[name]
        same = next(
            (
                s
                for s in shown
                if s.pred.shape == p.shape
                and np.array_equal(np.isnan(s.pred), np.isnan(p))
                and np.allclose(np.nan_to_num(s.pred), np.nan_to_num(p), rtol=0, atol=1e-9)
            ),
            None,
        )
        if same is None:
            shown.append(Shown(name, [name], p))
        else:
            same.members.append(name)
    notes = []
    for s in shown:
        if len(s.members) > 1:
            s.label = " = ".join(s.members)
            notes.append(
                f"{' and '.join(s.members)} make identical predictions on every item; the figures draw them "
                "once"
            )
    return shown, notes
