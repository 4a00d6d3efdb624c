#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the GPU check needs beyond the GPU image's own packages.
#
# The image (see tests/gpu/README.md) has Python 3.12, torch, accelerate, pyarrow, einops, msgpack, ninja,
# psutil and py-cpuinfo, but an older transformers and no trl, datasets, bitsandbytes, deepspeed or
# pydantic. Everything is downloaded for CPython 3.12 on manylinux x86_64 with --no-deps (so torch is
# never pulled in), DeepSpeed is built here as a pure-Python wheel (its CUDA ops compile on first use),
# and bitsandbytes is slimmed to its CUDA 13.0 and CPU libraries to fit the 64 MiB a device call carries.
#
# Usage: bash tests/gpu/fetch_wheels.sh            (from the repository root; uses .venv's pip)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
pip=".venv/bin/pip"
python=".venv/bin/python"
dest=".whl"
mkdir -p "$dest"

# Pinned as in pyproject.toml's trainer extra, plus the dependencies the image lacks.
pure_and_cp312=(
  trl==1.16.0
  datasets==5.2.0
  transformers==5.23.0
  peft==0.21.2
  pydantic==2.14.3
  pydantic-core==2.50.4
  annotated-types==0.8.0
  typing-inspection==0.4.5
  dill==0.4.1
  multiprocess==0.70.19
  hjson==3.1.0
  # training.ligerKernels (pure Python; its Triton kernels compile on first use with the image's triton).
  liger-kernel==0.8.5
)
# flash-attn is not fetched: PyPI has only its source distribution (no wheel for any torch), and building it
# needs the CUDA toolkit and hours. Without it the check's lora-fa2 run is skipped and attention auto uses sdpa.
"$pip" download --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$dest" "${pure_and_cp312[@]}"

# DeepSpeed ships only an sdist: build the wheel against this venv's torch (no build isolation, which
# would download torch again). DS_BUILD_OPS is unset, so no op is compiled now.
"$pip" wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w "$dest"

# bitsandbytes: one wheel with every CUDA/ROCm build (43 MB); keep the libraries for CUDA 13.0 (the
# image's torch is cu130) and the CPU fallback.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$pip" download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 \
  -d "$tmp" bitsandbytes==0.50.2
"$python" - "$tmp"/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl "$dest" <<'EOF'
import sys
import zipfile
from pathlib import Path

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so")


def wanted(name: str) -> bool:
    return not name.endswith(".so") or name.rsplit("/", 1)[-1] in keep


with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest / source.name, "w", zipfile.ZIP_DEFLATED) as out:
    for item in src.infolist():
        if not wanted(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if wanted(line.split(",", 1)[0])).encode()
        out.writestr(item, data)
print(f"slimmed {source.name}: {(dest / source.name).stat().st_size / 2**20:.1f} MiB")
EOF
ls -la "$dest"
du -sh "$dest"
