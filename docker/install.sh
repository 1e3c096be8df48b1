#!/bin/sh
# Install nftlens for serving into a virtual environment: the Dockerfile's install step.
# CI runs this same script (tests/test_container_recipe.py), so the image recipe is tested without Docker.
#   usage: docker/install.sh cpu|gpu VENV [SOURCE_DIR]
set -eu
target="${1:?usage: install.sh cpu|gpu VENV [SOURCE_DIR]}"
venv="${2:?usage: install.sh cpu|gpu VENV [SOURCE_DIR]}"
src="${3:-.}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check -q --upgrade pip
# pymilvus: the client for a shared Milvus catalog (NFTLENS_CATALOG=milvus://...); Milvus Lite is not needed here
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check -q "$src" "pymilvus>=2.4"
if [ "$target" = gpu ]; then
  # onnxruntime and onnxruntime-gpu ship the same module: remove the CPU one before adding the GPU one.
  "$venv/bin/python" -m pip uninstall -y -q onnxruntime
  "$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check -q onnxruntime-gpu
fi
"$venv/bin/python" - "$target" <<'PY'
import importlib.util, sys
import onnxruntime
import pymilvus  # noqa: F401
assert importlib.util.find_spec("torch") is None, "torch must never be in the serving install"
import app.ui  # the review page's files are package data: a plain (non-editable) install must carry them
import fastapi_offline  # noqa: F401  (the /docs and /redoc assets)
assert all((app.ui.STATIC / f).is_file() for f in ("index.html", "review.js", "review.css")), app.ui.STATIC
providers = onnxruntime.get_available_providers()
if sys.argv[1] == "gpu":
    assert "CUDAExecutionProvider" in providers, providers
print("serving install ok: onnxruntime", onnxruntime.__version__, providers)
PY
