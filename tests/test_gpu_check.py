"""benchmarks/gpu_check.sh in its CPU form: prepares data, trains a tiny model, reports positive finite figures."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_cpu_mode_reports_figures(data_dir, tmp_path):
    output_json = tmp_path / "check.json"
    work_dir = tmp_path / "work"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--minutes", "0.2",
               "--data-dir", str(data_dir), "--work-dir", str(work_dir), "--json", str(output_json)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    figures = json.loads(output_json.read_text())
    for key in ("tgt_tokens_per_s", "peak_memory_gib", "val_loss", "timed_seconds"):
        assert math.isfinite(figures[key]), f"{key} = {figures[key]}"
        assert figures[key] > 0, f"{key} = {figures[key]}"
    assert figures["accelerator"] == "cpu"
    assert figures["precision"] == "32-true"
    assert figures["timed_steps"] > 0
    assert figures["steps"] > figures["timed_steps"]
    # A one-layer model with 300 pieces starts near ln(300) = 5.7 and cannot reach zero in a few seconds.
    assert 0.5 < figures["val_loss"] < 8.0

    printed = result.stdout
    tokens_line = re.search(r"^target tokens/s: ([\d,]+)", printed, re.MULTILINE)
    assert tokens_line, printed
    assert int(tokens_line.group(1).replace(",", "")) == round(figures["tgt_tokens_per_s"])
    assert re.search(r"^peak memory: [\d.]+ GiB", printed, re.MULTILINE), printed
    assert f"validation loss: {figures['val_loss']:.4f}" in printed

    # The check writes only into its work folder: data, tokenizer and no model checkpoints.
    assert (work_dir / "data" / "tokenizer" / "spm.model").is_file()
    assert not list(work_dir.rglob("*.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.json", "work"]
