"""The image recipe, tested without a Docker engine: the install script the Dockerfile runs, run here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_what_exists_and_is_hardened():
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is missing"
    assert {"cpu", "gpu"} <= set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))
    assert (
        len(re.findall(r"^USER nftlens$", text, re.M)) == 2
        and len(re.findall(r"^HEALTHCHECK ", text, re.M)) == 2
    )
    assert "torch" not in text.replace("no torch", "")
    assert "docker/install.sh cpu" in text and "docker/install.sh gpu" in text


def test_compose_profiles_wire_gpu_and_milvus():
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["nftlens"]["build"]["target"] == "cpu" and "profiles" not in services["nftlens"]
    gpu = services["nftlens-gpu"]
    assert (
        gpu["profiles"] == ["gpu"]
        and gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    )
    replica = services["nftlens-milvus"]
    assert replica["environment"]["NFTLENS_CATALOG"].startswith("milvus://milvus:19530")
    assert {"milvus", "etcd", "minio"} <= {
        name for name, s in services.items() if s.get("profiles") == ["milvus"]
    }


@pytest.mark.slow
def test_install_script_builds_a_torch_free_serving_env(tmp_path):
    import shutil

    # the source tree exactly as the Dockerfile's `source` stage copies it (no training/)
    src = tmp_path / "src"
    text = (ROOT / "Dockerfile").read_text()
    source_stage = text.split("FROM source AS", 1)[0]
    for item in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*?) \S+$", source_stage, re.M):
        for name in item.split():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
            copy(ROOT / name, src / name)
    assert (src / "app").is_dir() and not (src / "training").exists()
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["sh", str(ROOT / "docker/install.sh"), "cpu", str(venv), str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "serving install ok" in out.stdout
    shipped = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('training'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert shipped.stdout.strip() == "None", "the serving install must not ship training/"
    help_text = subprocess.run(
        [str(venv / "bin/nftlens"), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert help_text.returncode == 0 and "serve" in help_text.stdout
    # training commands say which extra they need instead of crashing
    train = subprocess.run(
        [str(venv / "bin/nftlens"), "train", "--arch", "resnet18", "--data", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert train.returncode == 2 and "nftlens[train]" in train.stderr
    assert sys.executable != str(venv / "bin/python")
