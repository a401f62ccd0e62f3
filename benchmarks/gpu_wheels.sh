#!/usr/bin/env bash
# Wheels for benchmarks.gpu_qwen on a CUDA machine whose Python 3.12 brings torch, torchvision,
# tokenizers and huggingface_hub but not this project's other pins (the lent H200's image):
# the versions installed in .venv, downloaded into ${1:-.whl}. There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:. HF_HUB_OFFLINE=1 python3 -m benchmarks.gpu_qwen --out DIR --work /tmp/gpu_qwen
set -euo pipefail
dest=${1:-.whl}
pkgs="transformers pydantic pydantic_core pydantic-settings python-dotenv annotated-types
      typing-inspection typing_extensions boto3 botocore s3transfer jmespath dill"
pins=$(.venv/bin/python - $pkgs <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))
PY
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dest" $pins
echo "$dest: $(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
