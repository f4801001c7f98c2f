"""How idle OpenMP threads wait, against torch threads, with and without a busy process beside them.

    python bench/openmp_wait.py --model mobilenet_v2 [--background-load 1] [--seconds 4]

Each combination of a waiting policy (libgomp's default, ``OMP_WAIT_POLICY=PASSIVE``, PASSIVE with
``GOMP_SPINCOUNT=30000`` as `evoked.device.OPENMP_DEFAULTS`, ACTIVE) and a thread count (1 .. the
usable cores) runs in a fresh process (OpenMP reads the variables when torch loads it): a torchvision
model, random weights, channels_last, bf16 autocast where the CPU has bf16 units, batch 32 at 224 x 224,
model-only img/s over ``--seconds`` after one untimed batch. ``--background-load K`` keeps K busy
processes (`background.BackgroundLoad`) running throughout. Prints one line per combination with the
1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from background import BackgroundLoad  # bench/background.py (this script's folder)
from evoked.device import available_cores

POLICIES = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "passive+spin30k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
CHILD = """
import json, sys, time
import torch, torchvision
from evoked.extract.cpu import fast_bf16
name, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(threads)
m = torchvision.models.get_model(name, weights=None).eval().to(memory_format=torch.channels_last)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16())
with torch.inference_mode(), amp:
    m(x)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        m(x)
        n += 32
print(json.dumps({"img_s": n / (time.perf_counter() - t0)}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="a torchvision model name")
    p.add_argument("--background-load", type=int, default=0, metavar="K")
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    with BackgroundLoad(args.background_load):
        for policy, env_vars in POLICIES.items():
            for threads in range(1, available_cores() + 1):
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                env.update(env_vars)
                cmd = [sys.executable, "-c", CHILD, args.model, str(threads), str(args.seconds)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"{policy} threads={threads}: failed\n{done.stderr[-1000:]}", file=sys.stderr)
                    return 1
                rate = json.loads(done.stdout.strip().splitlines()[-1])["img_s"]
                print(
                    f"{args.model} background={args.background_load} {policy:<16} threads={threads} "
                    f"{rate:7.1f} img/s  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
