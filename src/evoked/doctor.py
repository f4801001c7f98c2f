"""`evoked doctor`: what this machine offers evoked, and which pretrained weights are here."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path

from evoked import __version__

_PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "faiss-gpu",
    "faiss-cpu",
    "scikit-learn",
    "lightgbm",
    "h5py",
    "numpy",
    "pillow",
)
#: pretrained CLIP weights worth looking for in the local caches
_CLIP_CANDIDATES = (
    ("ViT-B-32", "openai"),
    ("ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B-16", "openai"),
    ("ViT-L-14", "openai"),
)


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _torch_info() -> dict:
    import torch

    info = {
        "cuda_available": torch.cuda.is_available(),
        "cuda_build": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "devices": [],
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    return info


def _cpu_info() -> dict:
    """Cores this process may use and the CPU's bf16 units (what `--precision` does on the CPU)."""
    import torch

    from evoked.extract.cpu import cpu_summary
    from evoked.extract.precision import resolve_precision

    info = cpu_summary()
    info["extract_auto_precision"] = resolve_precision("auto", torch.device("cpu"))
    return info


def _faiss_info() -> dict:
    try:
        import faiss
    except ImportError as e:
        return {"available": False, "error": str(e)}
    return {"available": True, "version": faiss.__version__, "gpus": faiss.get_num_gpus()}


def _gpu_jpeg() -> bool | None:
    """Whether torchvision can decode JPEGs on the GPU (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        import io
        import warnings

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg

            decode_jpeg(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), device="cuda")
        return True
    except Exception:
        return False


def _torchvision_weights() -> list[dict]:
    import torchvision

    from evoked.extract.registry import list_backbones
    from evoked.extract.weights import torchvision_cached_file

    names = [b for b in list_backbones(families=False) if b.startswith("resnet")] + ["mobilenet_v2"]
    out = []
    for name in names:
        w = torchvision.models.get_model_weights(name).DEFAULT
        path = torchvision_cached_file(w.url)
        out.append({"backbone": name, "weights": str(w), "file": str(path), "present": path.is_file()})
    return out


def _clip_weights() -> list[dict]:
    import open_clip

    from evoked.extract.backbones.clip import _cached_pretrained

    out = []
    for arch, tag in _CLIP_CANDIDATES:
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        hit = _cached_pretrained(cfg) if cfg else None
        out.append(
            {"backbone": f"clip:{arch}:{tag}", "present": hit is not None, "file": str(hit) if hit else None}
        )
    return out


def diagnose() -> dict:
    """Everything `evoked doctor` prints, as a dict."""
    import torch
    from huggingface_hub import constants

    from evoked.extract.weights import offline

    return {
        "evoked": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_info(),
        "packages": {p: _version(p) for p in _PACKAGES if _version(p)},
        "torch": _torch_info(),
        "gpu_jpeg_decode": _gpu_jpeg(),
        "faiss": _faiss_info(),
        "offline": offline(),
        "caches": {
            "torch_hub": torch.hub.get_dir(),
            "huggingface_hub": constants.HF_HUB_CACHE,
            "open_clip_url_downloads": str(Path.home() / ".cache" / "clip"),
        },
        "weights": {"torchvision": _torchvision_weights(), "open_clip": _clip_weights()},
    }


def format_diagnosis(d: dict) -> str:
    t = d["torch"]
    lines = [
        f"evoked {d['evoked']} on Python {d['python']}, {d['platform']}, {d['cpus']} CPUs",
        "packages: " + ", ".join(f"{k} {v}" for k, v in d["packages"].items()),
        f"torch: CUDA {'available' if t['cuda_available'] else 'not available'}"
        + (f" (built for CUDA {t['cuda_build']})" if t["cuda_build"] else " (CPU build)")
        + f", {t['threads']} threads",
    ]
    for dev in t["devices"]:
        lines.append(
            f"  cuda:{dev['index']} {dev['name']}, {dev['memory_gib']} GiB, sm {dev['capability']}, "
            f"bf16 {'yes' if dev['bf16'] else 'no'}"
        )
    c = d["cpu"]
    lines.append(
        f"CPU: {c['cores']} cores available; "
        + (
            f"bf16 units {', '.join(c['bf16_units'])}: extraction with --precision bf16 runs CNNs under bf16 "
            f"autocast and CLIP ViTs with bf16 weights; --precision auto gives {c['extract_auto_precision']} here"
            + (
                " (CNNs under autocast, ViTs in bf16 weights)"
                if c["extract_auto_precision"] == "bf16"
                else ""
            )
            if c["fast_bf16"]
            else "no bf16 units (AMX or AVX-512 BF16): bf16 would be emulated, extraction stays fp32"
        )
    )
    g = d["gpu_jpeg_decode"]
    lines.append(
        "GPU JPEG decoding: " + ("n/a (no CUDA)" if g is None else "yes" if g else "no (CPU decoding)")
    )
    f = d["faiss"]
    lines.append(
        f"faiss: {f.get('version')} with {f.get('gpus')} GPU(s)"
        if f["available"]
        else f"faiss: missing ({f['error']})"
    )
    lines.append(f"offline mode (EVOKED_OFFLINE / HF_HUB_OFFLINE): {'on' if d['offline'] else 'off'}")
    lines.append("caches: " + ", ".join(f"{k} {v}" for k, v in d["caches"].items()))
    lines.append("pretrained weights present locally:")
    for w in d["weights"]["torchvision"] + d["weights"]["open_clip"]:
        lines.append(
            f"  {'yes' if w['present'] else 'no ':<3}  {w['backbone']}"
            + (f"  {w['file']}" if w["present"] else "")
        )
    if not any(w["present"] for w in d["weights"]["torchvision"] + d["weights"]["open_clip"]):
        lines.append(
            "  none: extract with --weights PATH (a local file) or --weights random (no pretrained meaning)"
        )
    return "\n".join(lines)
