"""The core install (issue 17 part 1): a fresh venv with `pip install <repo>` and no extras hashes, embeds with the
shipped ONNX descriptor and dedups a real folder; a probe command names the missing [probe] extra in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "photos" / "kodak"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS}")]


def test_core_install_indexes_dedups_and_names_the_probe_extra(tmp_path):
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip, auditor = venv / "bin" / "pip", venv / "bin" / "auditor"
    subprocess.run([str(pip), "install", "-q", str(REPO)], check=True, timeout=1500)
    listed = subprocess.run([str(pip), "list"], capture_output=True, text=True, check=True).stdout.lower()
    assert "\ntorch " not in listed and "diffusers" not in listed and "img2dataset" not in listed
    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(1, 6):
        shutil.copy(PHOTOS / f"kodak{i:02d}.png", ds / f"kodak{i:02d}.png")
    shutil.copy(ds / "kodak01.png", ds / "again01.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    r = subprocess.run([str(auditor), "index", str(ds), "--out", str(run)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "indexed 6 samples" in r.stdout
    r = subprocess.run([str(auditor), "dedup", str(run)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert '"dropped": 1' in r.stdout
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    r = subprocess.run([str(auditor), "probe", str(run), "--model", str(model)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "auditor: error: 'auditor probe' needs the [probe] extra: pip install 'auditor[probe]'")
