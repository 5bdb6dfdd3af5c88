#!/usr/bin/env bash
# One call checks spinppo on a lent GPU machine (about 4-5 minutes; under 8):
#
#   scripts/gpu_check.sh OUTDIR
#
# 1. packages: when $PYTHON (python3) lacks gymnasium, ale-py, mujoco or mpirun, installs the cp312 wheels
#    carried in .gpu_wheels/ (scripts/gpu_wheels.sh fills it; no network is needed) into a prefix of their
#    own beside the machine's torch, mpi4py, numpy and opencv; spinppo itself runs from this checkout;
# 2. the tests marked gpu (tests/test_device.py; they skip without CUDA);
# 3. scripts/gpu_check.py: Pong's raw stepping, then short Pong and Walker2d runs on cuda and on the CPU
#    (Walker2d under auto too) under mpirun -np 4, each checked for identical ranks, with end-to-end steps/s.
#
# Everything it prints goes to OUTDIR/gpu_check.log too; OUTDIR/summary.md is the table for
# docs/benchmarks.md, OUTDIR/summary.json the same figures, OUTDIR/runs the runs' progress.txt.
# Without CUDA it says so and does the CPU parts. Environment: PYTHON, WHEELS (.gpu_wheels), PREFIX (where
# the wheels go, /tmp/spinppo-gpu-prefix), RANKS (4), PONG_EPOCHS (12), WALKER_EPOCHS (8), INSTALL_ONLY=1
# (stop after step 1).
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
# A check that stops early (no packages, no MPI) still leaves a summary saying where it stopped.
trap 'code=$?; [ -f "$OUT/summary.md" ] || echo "The GPU check stopped (exit $code) before its runs: see gpu_check.log" > "$OUT/summary.md"' EXIT
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$REPO/.gpu_wheels}
PREFIX=${PREFIX:-/tmp/spinppo-gpu-prefix}
RANKS=${RANKS:-4}
START=$(date +%s)
step() { echo; echo "== [$(($(date +%s) - START)) s] $*"; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 MUJOCO_GL=egl
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

step "1. packages ($("$PY" -V 2>&1), $(command -v "$PY"))"
have() { "$PY" -c "import gymnasium, ale_py, mujoco, threadpoolctl, yaml, pytest" 2>/dev/null && command -v mpirun >/dev/null; }
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
if have; then
    echo "gymnasium, ale-py, mujoco, pytest and mpirun are already there: nothing to install"
else
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run scripts/gpu_wheels.sh first"; exit 2; }
    # --prefix (not a venv): the machine's own torch and mpi4py stay in use wherever they are installed.
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --no-deps --ignore-installed --no-warn-script-location \
            --prefix "$PREFIX" "$WHEELS"/*.whl || { echo "installing the wheels failed"; exit 2; }
    else  # (no pip: the wheels unpacked as pip would lay them out under a posix prefix)
        echo "no pip for $PY: unpacking the wheels into $PREFIX"
        "$PY" - "$PREFIX" "$WHEELS"/*.whl <<'UNPACK' || { echo "unpacking the wheels failed"; exit 2; }
import os, sys, sysconfig, zipfile
prefix = sys.argv[1]
site = sysconfig.get_path("purelib", "posix_prefix", {"base": prefix, "platbase": prefix})
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith("/"):
                continue
            top, _, rest = name.partition("/")
            if top.endswith(".data"):
                kind, _, rest = rest.partition("/")
                base = {"scripts": os.path.join(prefix, "bin"), "data": prefix}.get(kind, site)
                if kind == "headers":
                    continue
            else:
                base, rest = site, name
            dest = os.path.join(base, rest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as out:
                out.write(src.read())
            if os.sep + "bin" + os.sep in dest:
                os.chmod(dest, 0o755)
UNPACK
    fi
    # Where they went depends on the interpreter's install scheme (a Debian-style Python adds local/, a
    # lib64 platform splits purelib and platlib): found, not assumed.
    SITES=$(find "$PREFIX" -maxdepth 6 -type d \( -name site-packages -o -name dist-packages \) | paste -sd:)
    MPIRUN_BIN=$(find "$PREFIX" -path '*/bin/mpirun' | head -1)
    LIBMPI=$(find "$PREFIX" -name 'libmpi.so.12' | head -1)
    [ -n "$SITES" ] && [ -n "$MPIRUN_BIN" ] && [ -n "$LIBMPI" ] || {
        echo "the wheels went somewhere unexpected under $PREFIX (site dirs '$SITES', mpirun '$MPIRUN_BIN', libmpi '$LIBMPI')"; exit 2; }
    export PYTHONPATH="$PYTHONPATH:$SITES"
    export PATH="$(dirname "$MPIRUN_BIN"):$PATH"
    # mpi4py loads the MPI library the mpich wheel brought (the launcher's own).
    LIBDIR=$(dirname "$LIBMPI")
    export MPI4PY_LIBMPI="$LIBMPI" LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    have || { echo "the wheels are installed but gymnasium, ale-py, mujoco or mpirun still cannot be found"; exit 2; }
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $PREFIX"
fi
"$PY" -c "import torch, gymnasium, ale_py, mujoco, mpi4py; print('torch', torch.__version__, '(CUDA build', \
torch.version.cuda, '| GPUs', torch.cuda.device_count(), ') | gymnasium', gymnasium.__version__, '| ale-py', \
ale_py.__version__, '| mujoco', mujoco.__version__, '| mpi4py', mpi4py.__version__)" || exit 2
SIZE=$(timeout -k 5 60 mpirun -np 2 "$PY" -c "from mpi4py import MPI; w = MPI.COMM_WORLD; w.Get_rank() or print(w.Get_size())")
echo "mpirun: $(command -v mpirun); mpirun -np 2 gives ranks of a world of size $SIZE"
[ "$SIZE" = "2" ] || { echo "mpi4py does not use mpirun's MPI (world size $SIZE, not 2)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,compute_mode --format=csv
[ "${INSTALL_ONLY:-0}" = "1" ] && { step "done (INSTALL_ONLY)"; exit 0; }

step "2. the tests marked gpu"
timeout -k 10 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_device.py -rs --durations=0
TESTS=$?

step "3. Pong and Walker2d on cuda and on the CPU, mpirun -np $RANKS"
# (its own budget, 250 s, ends its commands in time to write the summary before this limit)
timeout -k 10 270 "$PY" scripts/gpu_check.py "$OUT" --ranks "$RANKS" --pong_epochs "${PONG_EPOCHS:-12}" \
    --walker_epochs "${WALKER_EPOCHS:-8}" --budget 250
RUNS=$?

step "done: tests exit $TESTS, runs exit $RUNS; log and figures in $OUT"
[ "$TESTS" = 0 ] && [ "$RUNS" = 0 ]
