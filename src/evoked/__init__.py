"""evoked: what emotion does an image evoke, as valence and arousal."""

__version__ = "0.1.0"
