"""The training half of ``scripts/gpu_check.sh``: short Pong and Walker2d runs on cuda and on the CPU under
``mpirun -np RANKS``, each checked for identical ranks, with end-to-end steps per second.

    python scripts/gpu_check.py OUTDIR [--ranks 4] [--pong_epochs 12] [--walker_epochs 8]

For each run: ``mpirun -np RANKS python scripts/rank_check.py ppo --config configs/... --device D`` (the
ranks' parameters compared before every broadcast), then from its progress.txt the steps per second after
the first epoch (which pays for start-up: process start, CUDA context, the first kernels) and rank 0's
seconds per epoch in the environments, the rollout's policy, the update and MPI. Pong's raw stepping (its
environments with random actions, no policy, ``bench_atari.py``'s "raw") at the same rank count is the
yardstick of the issue's goal: end to end at least 50% of it on the GPU. Walker2d runs under ``auto`` too,
which must be no slower than the CPU (for an MLP, auto is the CPU). With CUDA, Pong runs a third time on
the GPU with ``--precision bf16`` (the encoder under autocast, on the tensor cores).

Without CUDA the cuda runs are skipped, with a line saying so. Writes OUTDIR/summary.json and
OUTDIR/summary.md (the table for docs/benchmarks.md), and keeps each run's progress.txt under OUTDIR/runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
MPIRUN = shutil.which("mpirun") or str(Path(PY).parent / "mpirun")


class Clock:
    """The check's time budget: every command gets what is left of it (``--budget`` seconds in all), so
    that the check writes its summary before gpu_check.sh's outer time limit ends it."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()


CLOCK = Clock(float("inf"))


def sh(args: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run ``args`` in the repository, its output appended to ``log``; the CompletedProcess (never
    raises: a failed, timed-out or skipped run is reported, and the check goes on). The time limit is
    ``timeout`` or what is left of the check's budget; at the limit the command's whole process group
    (mpirun and its ranks, which would otherwise hold the GPU and the cores) is ended."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    timeout = min(timeout, CLOCK.left() - 5)
    if timeout < 10:
        proc = subprocess.CompletedProcess(args, 124, "", "skipped: the check's time budget is spent")
    else:
        child = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # (its own process group: mpirun's ranks are ended with it)
        )
        try:
            out, err = child.communicate(timeout=timeout)
            proc = subprocess.CompletedProcess(args, child.returncode, out, err)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
                try:
                    out, err = child.communicate(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    out, err = "", ""
            proc = subprocess.CompletedProcess(
                args, 124, out or "", f"{err or ''}timed out after {timeout:.0f} s"
            )
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
    return proc


def raw_stepping(ranks: int, num_envs: int, log: Path) -> float | None:
    """Pong's environments (the training stack, random actions) in agent steps per second, all ranks."""
    args = [MPIRUN, "-np", str(ranks), PY, "scripts/bench_atari.py", "--child", "raw", "--env", "Pong"]
    proc = sh([*args, "--steps", "6000", "--num_envs", str(num_envs)], 60, log)
    if proc.returncode or "RATE" not in proc.stdout:
        return None
    return float(proc.stdout.split("RATE")[1].split()[0])


def grads_bench(ranks: int, device: str, log: Path) -> list[str]:
    """bench_mpi_avg_grads.py's lines for ``device`` at ``ranks`` ranks (one per network size)."""
    args = [MPIRUN, "-np", str(ranks), PY, "scripts/bench_mpi_avg_grads.py", "--device", device]
    proc = sh([*args, "--reps", "300"], 60, log)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("mpi_avg_grads")]
    return lines or [f"mpi_avg_grads --device {device}: failed (exit {proc.returncode})"]


def train(
    name: str,
    config: str,
    device: str,
    ranks: int,
    epochs: int,
    out: Path,
    log: Path,
    extra: tuple[str, ...] = (),
) -> dict:
    """One short run (``extra``: more flags, e.g. ``--precision bf16``); its figures (or why there are
    none)."""
    runs = out / "runs"
    args = [MPIRUN, "-np", str(ranks), PY, "scripts/rank_check.py", "ppo", "--config", config, *extra]
    args += ["--device", device, "--epochs", str(epochs), "--data_dir", str(runs), "--exp_name", name]
    args += ["--tensorboard", "false", "--save_freq", "1000"]
    started = time.time()
    proc = sh(args, 90, log)  # (the whole check must end within 8 minutes)
    result: dict = {"run": name, "device": device, "exit": proc.returncode, "wall_s": time.time() - started}
    identical = [line for line in proc.stdout.splitlines() if line.startswith("rank_check:")]
    result["ranks"] = identical[-1].removeprefix("rank_check: ") if identical else "no check (the run failed)"
    device_line = [line for line in proc.stdout.splitlines() if line.startswith("Device:")]
    result["device_used"] = device_line[-1].split(" on ")[-1].split(" ")[0] if device_line else "cpu"
    progress = runs / name / f"{name}_s0" / "progress.txt"
    if proc.returncode or not progress.is_file():
        result["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        return result
    try:
        with progress.open() as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")]
    except (OSError, ValueError) as e:
        result["error"] = f"progress.txt unreadable: {e}"[:300]
        return result
    later = rows[1:]
    if not later:
        result["error"] = "only one epoch: no steady-state figure"
        return result
    seconds = rows[-1]["Time"] - rows[0]["Time"]
    result["steps_per_s"] = (rows[-1]["TotalEnvInteracts"] - rows[0]["TotalEnvInteracts"]) / seconds
    for key in ("EnvTime", "InferenceTime", "UpdateTime", "MPITime"):
        result[key] = sum(r[key] for r in later) / len(later)
    result["epoch_s"] = seconds / len(later)
    result["AverageEpRet"] = rows[-1].get("AverageEpRet")
    return result


def ranks_ok(line: str) -> bool:
    """Whether rank_check's line says the ranks were identical before every update (and there were some)."""
    m = re.fullmatch(r"ranks identical before (\d+) of (\d+) updates", line)
    return bool(m) and m[1] == m[2] and int(m[2]) > 0


def write_summary(out: Path, head: dict, results: list[dict], grads: list[str]) -> None:
    """OUTDIR/summary.json and summary.md from what was measured so far (written after every step, so
    that a check cut short still leaves its figures)."""
    summary = {**head, "runs": results, "mpi_avg_grads": grads}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    raw, gpu = head.get("pong_raw"), head.get("gpu")
    lines = [
        f"GPU: {gpu or 'none'}; torch {head['torch']}; mpirun -np {head['ranks']}; Pong raw stepping "
        + (f"{raw:.0f} steps/s" if raw else "not measured"),
        "",
        "| run | device | steps/s | of raw | epoch s | EnvTime | InferenceTime | UpdateTime | MPITime "
        "| ranks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "steps_per_s" not in r:
            lines.append(f"| {r['env']} | {r['device']} | failed | | | | | | | {r['ranks']} |")
            continue
        of_raw = f"{r['of_raw']:.0%}" if "of_raw" in r else ""
        cells = [f"{r[k]:.2f}" for k in ("epoch_s", "EnvTime", "InferenceTime", "UpdateTime", "MPITime")]
        lines.append(
            f"| {r['env']} | {r['device']} ({r['device_used']}) | {r['steps_per_s']:.0f} | {of_raw} | "
            + " | ".join(cells)
            + f" | {r['ranks']} |"
        )
    lines += ["", "```", *grads, "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    global CLOCK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--pong_epochs", type=int, default=12)
    parser.add_argument("--walker_epochs", type=int, default=8)
    parser.add_argument("--budget", type=float, default=250, help="seconds for the whole check")
    args = parser.parse_args()
    CLOCK = Clock(args.budget)
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.log"
    import torch

    cuda = torch.cuda.is_available()  # (no CUDA context here: a GPU in exclusive mode stays the runs')
    gpu = None
    if cuda:
        smi = shutil.which("nvidia-smi")
        names = (
            sh([smi, "--query-gpu=name", "--format=csv,noheader"], 20, log).stdout.split("\n") if smi else []
        )
        gpu = (names[0].strip() if names else "") or "a CUDA device"
    print(
        f"torch {torch.__version__}, CUDA "
        + (f"available: {gpu}" if cuda else "absent: the cuda runs are skipped")
    )
    devices = (["cuda"] if cuda else []) + ["cpu"]
    head = {"torch": torch.__version__, "gpu": gpu, "ranks": args.ranks, "pong_raw": None}
    results: list[dict] = []
    grads: list[str] = []
    write_summary(out, head, results, grads)
    pong_envs = 4  # configs/atari/Pong.yaml's num_envs per rank
    raw = head["pong_raw"] = raw_stepping(args.ranks, pong_envs, log)
    print(
        f"Pong raw stepping, {args.ranks} ranks x {pong_envs} envs: "
        + (f"{raw:.0f} steps/s" if raw else "failed"),
        flush=True,
    )
    write_summary(out, head, results, grads)
    # The runs first (Pong on the GPU is the question), the gradient benchmark after them.
    # Pong in bfloat16 on the GPU too (--precision bf16: the encoder under autocast, tensor cores).
    bf16 = ("--precision", "bf16")
    plan = [("pong", "configs/atari/Pong.yaml", d, args.pong_epochs, ()) for d in devices]
    plan += [("pong", "configs/atari/Pong.yaml", "cuda", args.pong_epochs, bf16)] if cuda else []
    plan += [
        ("walker2d", "configs/mujoco/Walker2d.yaml", d, args.walker_epochs, ()) for d in [*devices, "auto"]
    ]
    for env, config, device, epochs, extra in plan:
        name = f"{env}-{device}" + ("-bf16" if extra else "")
        r = train(name, config, device, args.ranks, epochs, out, log, extra)
        r["env"] = env + (" bf16" if extra else "")
        if env == "pong" and raw and "steps_per_s" in r:  # (both precisions)
            r["of_raw"] = r["steps_per_s"] / raw
        results.append(r)
        write_summary(out, head, results, grads)
        if "steps_per_s" in r:
            parts = ", ".join(
                f"{k} {r[k]:.2f}" for k in ("EnvTime", "InferenceTime", "UpdateTime", "MPITime")
            )
            share = f" ({r['of_raw']:.0%} of raw stepping)" if "of_raw" in r else ""
            print(
                f"{env} --device {device} ({r['device_used']}): {r['steps_per_s']:.0f} steps/s end to end"
                f"{share}; "
                f"an epoch {r['epoch_s']:.2f} s: {parts} s; {r['ranks']}",
                flush=True,
            )
        else:
            print(
                f"{env} --device {device}: FAILED (exit {r['exit']}): {r.get('error')}; {r['ranks']}",
                flush=True,
            )
    for d in devices:
        grads += grads_bench(args.ranks, d, log)
        write_summary(out, head, results, grads)
    print("\n".join(grads), flush=True)
    print((out / "summary.md").read_text())
    bad = [r for r in results if r["exit"] or not ranks_ok(r["ranks"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
