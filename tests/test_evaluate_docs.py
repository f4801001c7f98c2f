"""Every bash and python block of docs/evaluate.md runs, in order, in a fresh directory."""

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluate.md"


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)


def test_every_command_in_docs_evaluate_runs(tmp_path: Path):
    blocks = _blocks(DOC.read_text("utf-8"))
    assert sum(kind == "bash" for kind, _ in blocks) >= 2 and sum(kind == "python" for kind, _ in blocks) >= 2
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env["MPLBACKEND"] = "Agg"
    for k, (kind, code) in enumerate(blocks):
        cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"block {k} ({kind}) failed:\n{code}\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "curve.png").is_file()
    assert (tmp_path / "report-euclid" / "va_plane.png").is_file()
    assert '"systems"' in (tmp_path / "report-quick.json").read_text()
