"""Every bash and python block of README.md and docs/*.md runs, in order, in a sandbox.

The sandbox holds small stand-ins for what the docs refer to: an Emotion6-shaped dataset at
`data/emotion6`, a folder dataset at `data/my_images`, single photos, and a MobileNetV2 state dict
with random values, its batch norm folded as in the offline weights file, where the docs use that file. Commands that would load
pretrained weights get `--weights random` added; nothing is downloaded.

The sandbox has 48 photos where Emotion6 has 1,980, so label budgets larger than its training
split are scaled down (`SANDBOX_SIZES`); nothing else in a command changes.

A block is skipped only when the line before it says why: `*Not run by the tests: REASON*`.
Blocks of other languages (text, json, plain fences) are output or layouts, not commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"^\*Not run by the tests: (.+)\*$", flags=re.S)
FENCE = re.compile(r"^```(\S*)\s*$")
EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
PER_CATEGORY = 8
BLOCK_TIMEOUT_S = 300
#: Label budgets of the real dataset -> the sandbox's (about 29 training photos).
SANDBOX_SIZES = {
    "--n-labels 100 ": "--n-labels 20 ",
    "--n-labels 0,25,50,100,200,400,all ": "--n-labels 0,10,20,all ",
}

#: Files a document's blocks must have written: the commands ran and did their job.
EXPECT = {
    "README.md": [
        "splits/e6.csv",
        "feats/e6.h5",
        "feats/e6-mobilenet.h5",
        "runs/ft-two/run.json",
        "report/report.md",
    ],
    "api.md": ["splits/emotion6.csv", "runs/api-keywords/metrics.json", "report/api/report.md"],
    "distributed.md": ["feats/my_images.h5", "feats/by_hand.h5"],
    "evaluate.md": [
        "report/report.md",
        "report/curve.png",
        "report-euclid/va_plane.png",
        "report-quick.json",
        "report-transfer/report.md",
        "predictions/e6-color.csv",
        "report-predictions/report.md",
        "report-paper/forest.pdf",
        "report-paper/report.tex",
        "runs/e6-repeats/repeats/seed-2/run.json",
        "report-repeats/report.md",
        "report-cross/report.tex",
    ],
    "finetune.md": ["runs/ft/two/run.json", "runs/ft/transfer/run.json", "report/ft-transfer/report.md"],
    "regress.md": ["runs/e6-pool/metrics.json", "runs/e6-curve/curve.csv", "runs/e6-best/predictions.csv",
                   "runs/e6-repeats/repeats/seed-2/run.json"],
    "serve.md": ["runs/e6/metrics.json"],
}


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None


def _paragraph_before(lines: list[str], i: int) -> str:
    """The paragraph that ends above line i (blank lines between are allowed), as one line."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    end = j
    while j >= 0 and lines[j].strip() and not lines[j].startswith("```"):
        j -= 1
    return " ".join(line.strip() for line in lines[j + 1 : end + 1])


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text("utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        reason = SKIP_MARK.match(_paragraph_before(lines, i))
        blocks.append(
            Block(
                path.name, i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n", reason and reason.group(1)
            )
        )
        i = end + 1
    return blocks


def offline_weights(code: str) -> str:
    """`evoked extract|finetune` with backbones but no --weights: random weights instead of a download."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    out = []
    for line in joined.split("\n"):
        words = line.split()
        if words[:2] in (["evoked", "extract"], ["evoked", "finetune"]) and "--backbone" in words:
            if "--weights" not in words:
                line += " --weights random"
        out.append(line)
    return "\n".join(out)


def sandbox_sizes(code: str) -> str:
    for real, small in SANDBOX_SIZES.items():
        code = code.replace(real, small)
    return code


# -- the sandbox ----------------------------------------------------------------------------------
def _photo(path: Path, rng: np.random.Generator, tint: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = 72, 96
    base = tint + rng.normal(0, 25, size=3)
    grad = np.linspace(-40, 40, w)[None, :, None]
    noise = rng.normal(0, 12, size=(h, w, 3))
    Image.fromarray(np.clip(base + grad + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def _folded_mobilenet_v2(torch, torchvision) -> dict:
    """A random MobileNetV2 in the offline file's format: batch norm calibrated on noise, then folded
    into the convolutions (weight 1, running mean 0, running var 1 - eps, the folded bias)."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.momentum = None  # a plain average over the calibration batches
        for _ in range(2):
            model(torch.randn(8, 3, 96, 96))
        conv = None
        for m in model.modules():  # each BatchNorm2d follows the Conv2d it normalises
            if isinstance(m, torch.nn.Conv2d):
                conv = m
            elif isinstance(m, torch.nn.BatchNorm2d):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                m.bias.sub_(m.running_mean * scale)
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
    return model.state_dict()


def _build_sandbox(root: Path) -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    tints = {e: rng.uniform(40, 220, size=3) for e in EMOTIONS}
    va = {"anger": (2.5, 6.5), "disgust": (2.8, 5.0), "fear": (2.6, 6.8), "joy": (7.5, 6.0)}
    va |= {"sadness": (2.4, 3.5), "surprise": (6.0, 6.9)}
    rows = [
        "[image_filename]\t[valence]\t[arousal]\t" + "\t".join(f"[prob. {e}]" for e in (*EMOTIONS, "neutral"))
    ]
    for e in EMOTIONS:
        for n in range(1, PER_CATEGORY + 1):
            _photo(root / "data/emotion6/images" / e / f"{n}.jpg", rng, tints[e])
            v, a = np.clip(np.array(va[e]) + rng.normal(0, 0.7, 2), 1, 9)
            probs = rng.dirichlet(np.ones(7))
            probs = 0.5 * probs + 0.5 * np.eye(7)[EMOTIONS.index(e)]
            rows.append(f"{e}/{n}.jpg\t{v:.1f}\t{a:.1f}\t" + "\t".join(f"{p:.4f}" for p in probs))
    (root / "data/emotion6/ground_truth.txt").write_text("\n".join(rows) + "\n")
    for e in ("calm", "storm"):
        for n in range(6):
            _photo(root / "data/my_images" / e / f"{n}.jpg", rng, tints["joy" if e == "calm" else "fear"])
    for name in ("photo.jpg", "some_photo.jpg", "more_photos/a.jpg", "more_photos/b.jpg"):
        _photo(root / name, rng, tints["joy"])
    torch.save(_folded_mobilenet_v2(torch, torchvision), root / "mobilenet_v2_imagenet_tflite.pth")
    (root / "models").mkdir()
    os.link(root / "mobilenet_v2_imagenet_tflite.pth", root / "models/mobilenet_v2_imagenet_tflite.pth")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs-sandbox")
    _build_sandbox(root)
    return root


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env |= {"MPLBACKEND": "Agg", "EVOKED_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # Empty caches: a test must not pick up weights that happen to be on the machine.
    env |= {
        "TORCH_HOME": str(home / "torch"),
        "HF_HOME": str(home / "hf"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    return env


# -- the tests ------------------------------------------------------------------------------------
def test_parser_and_rewriting(tmp_path: Path):
    text = "x\n\n*Not run by the tests: needs\na GPU*\n\n```bash\nevoked extract a \\\n  --backbone resnet50\n```\n"
    text += "```python\nprint(1)\n```\n```text\nout\n```\n"
    doc = tmp_path / "d.md"
    doc.write_text(text)
    blocks = parse_blocks(doc)
    assert [(b.lang, b.skip_reason) for b in blocks] == [
        ("bash", "needs a GPU"),
        ("python", None),
        ("text", None),
    ]
    assert offline_weights(blocks[0].code).strip() == "evoked extract a --backbone resnet50 --weights random"
    kept = "evoked extract a --backbone tv:x --weights tv:x=f.pth\nevoked finetune --from runs/a\n"
    assert offline_weights(kept) == kept


def test_every_doc_has_commands_and_every_skip_says_why():
    for doc in DOCS:
        for b in parse_blocks(doc):
            if b.skip_reason is not None:
                assert len(b.skip_reason) > 10, f"{doc.name}:{b.line}: say why the block is not run"


@pytest.mark.docs  # minutes of CLI runs: its own step (`python -m pytest -q -m docs`), not the default suite
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_command_in_the_docs_runs(doc: Path, sandbox: Path, tmp_path: Path):
    blocks = [b for b in parse_blocks(doc) if b.lang in ("bash", "sh", "python") and b.skip_reason is None]
    if not blocks:
        pytest.skip(f"{doc.name} has no commands to run")
    work = tmp_path / "work"
    shutil.copytree(sandbox, work, copy_function=os.link)  # hard links: the blocks only add files
    env = _env(tmp_path)
    for b in blocks:
        if b.lang == "python":
            cmd = [sys.executable, "-c", b.code]
        else:
            cmd = ["bash", "-euo", "pipefail", "-c", sandbox_sizes(offline_weights(b.code))]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, (
            f"{b.doc}:{b.line} ({b.lang}) failed with exit code {done.returncode}:\n{b.code}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}"
        )
    for rel in EXPECT.get(doc.name, []):
        assert (work / rel).exists(), f"{doc.name}: its commands did not write {rel}"
