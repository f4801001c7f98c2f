"""Low-level colour and texture statistics, computed on the device in batch (see color_ops)."""

from __future__ import annotations

from evoked.extract.backbone import Backbone, Preprocess, WeightsInfo
from evoked.extract.color_ops import ColorFeatures

#: The whole image squashed to 224 x 224 (no crop: colour statistics describe all of it).
COLOR_PREPROCESS = Preprocess(resize=224, crop=224, mode="squash")


def color(arg: str | None, weights: str) -> Backbone:
    return Backbone(
        name="color",
        spec="color",
        module=ColorFeatures(),
        preprocess=COLOR_PREPROCESS,
        outputs=dict(ColorFeatures.OUTPUTS),
        default_outputs=tuple(ColorFeatures.OUTPUTS),
        weights=WeightsInfo("none", "no weights"),
        description="colour statistics (RGB, HSV), HSV histogram 16/8/8, Valdez-Mehrabian PAD, LBP-u2 (59)",
        amp=False,
    )
