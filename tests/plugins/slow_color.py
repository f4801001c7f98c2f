"""A test plugin: the colour backbone, slowed down so that a run can be killed halfway."""

import os
import time

from evoked.extract import register_backbone
from evoked.extract.backbones.color import color


class _Slow:
    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        return self.module(x)


@register_backbone("slow-color", help="colour statistics, slowly (tests only)")
def slow_color(arg, weights):
    bb = color(arg, weights)
    bb.name = bb.spec = "slow-color"
    bb.module.forward = _Slow(bb.module.forward)
    return bb
