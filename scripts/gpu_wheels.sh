#!/usr/bin/env bash
# Fill .gpu_wheels/ (gitignored) with the cp312 manylinux wheels scripts/gpu_check.sh installs on a lent GPU
# machine, which has Python 3.12, torch (CUDA), mpi4py, numpy, opencv, onnx and onnxruntime but no
# gymnasium, ale-py, mujoco, MPI launcher or pytest, and no network. Run it here (PyPI reachable):
#
#   scripts/gpu_wheels.sh            # then carry .gpu_wheels with the device run (64 MiB in all)
#
# Only binary wheels, for the GPU machine's interpreter and platform, not this one's; no dependencies are
# resolved (the list is complete and exact): numpy, typing_extensions and the rest of torch's are there.
# The versions are this project's (the .venv's), so that the GPU runs the code tested here.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-/work/main/.venv/bin/pip}
DEST=${1:-.gpu_wheels}
mkdir -p "$DEST"

PACKAGES=(
    # environments
    gymnasium==1.4.0 farama-notifications==0.0.6 cloudpickle
    ale-py==0.12.1
    mujoco==4.0.1 mujoco-core==4.0.1 glfw pyopengl imageio pillow  # (gymnasium's MuJoCo envs import imageio)
    # an MPI launcher (mpirun) and the library mpi4py loads
    mpich==5.0.2
    # spinppo's own small needs at run time
    threadpoolctl pyyaml typing_extensions
    # the tests marked gpu
    pytest pluggy iniconfig packaging pygments pytest-timeout
)
"$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 -d "$DEST" "${PACKAGES[@]}"
# Pure-Python wheels (py3-none-any) have no cp312 ABI tag: pip accepts them with --abi none.
ls -l "$DEST"
du -sh "$DEST"
