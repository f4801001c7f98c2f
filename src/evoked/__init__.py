"""evoked: what emotion does an image evoke, as valence and arousal."""

import os

# OpenMP threads spin while they wait by default. torch, faiss and LightGBM each bring an OpenMP
# runtime; in one process, or with the cores shared, spinning made the same work 3-10x slower on
# a 2-core machine (tests: 97 s against 9 s). It must be set before those libraries load, so it is
# set here, on the first import of evoked; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
