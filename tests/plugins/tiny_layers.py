"""A test plugin: a tiny CNN backbone that declares its layers (`evoked.extract.layers.with_layers`)."""

import torch
from torch import nn

from evoked.extract import register_backbone
from evoked.extract.backbone import Backbone, Preprocess, WeightsInfo
from evoked.extract.layers import with_layers


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(10, 12, 3, stride=2, padding=1), nn.ReLU()),
        )

    def forward(self, x):
        return {"pool": self.blocks(x).mean(dim=(2, 3))}


@register_backbone("tiny-layers", help="a three-block CNN with declared layers (tests only)")
def tiny_layers(arg, weights):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyNet().eval()
    bb = Backbone(
        name="tiny-layers",
        spec="tiny-layers",
        module=net,
        preprocess=Preprocess(resize=20, crop=16),
        outputs={"pool": 12},
        default_outputs=("pool",),
        weights=WeightsInfo("random", "random init (seed 0)"),
    )
    return with_layers(bb, [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)])
