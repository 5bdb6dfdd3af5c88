"""Export a run's policy: ``python -m spinppo.run export RUN_DIR --onnx OUT.onnx``.

    python -m spinppo.run export data/ppo-walker/ppo-walker_s0 --onnx walker.onnx
    python -m spinppo.run export data/ppo-crawler/ppo-crawler_s0 --itr 40 --onnx Crawler.onnx

The policy is ``pyt_save/model.pt`` (the latest) or ``pyt_save/model<N>.pt`` with ``--itr N``, as for
test_policy. A Unity run (config.json's env_fn kind "unity") is written in the form ML-Agents' own
exporter writes (inputs ``obs_0``, ``obs_1``, ... one per sensor as config.json's ``observation_shapes``
lists them, ``action_masks`` for discrete actions; outputs ``version_number``, ``memory_size``,
``continuous_actions`` ... ``deterministic_discrete_actions``; opset 9), so the file goes into a Unity
project's Behavior Parameters as a trained model. Any other run gets the generic form: input ``obs``,
outputs ``actions`` and ``deterministic_actions``, already clipped and shifted as spinppo sends them to
the environment. Both take raw observations (normalisation is inside the graph); an image policy
(one image observation: nature_cnn, simple, resnet or rllib) is written in the generic form only, its ``obs``
the images as the environment gives them (uint8 or float32, CHW or HWC). docs/export.md lists
every name, shape and dtype and the ML-Agents source they follow.

The file carries the run's environment in its metadata, so ``python -m spinppo.run test_policy OUT.onnx``
replays it without ``--env``. Before writing, the exporter checks the graph with ``onnx.checker`` and runs
it with onnxruntime against the torch policy; the file is written to a temporary file and renamed, never
left half-written. Bad input is a UserError (one line, exit code 2).

From Python::

    path = export_onnx("data/ppo-walker/ppo-walker_s0", "walker.onnx")
"""

from __future__ import annotations

import argparse
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np

from spinppo.tools.onnx_runner import OnnxPolicy
from spinppo.tools.onnx_writer import check_network, gym_model, metadata_for, unity_model
from spinppo.tools.policies import check_spaces, find_checkpoint, load_policy, parse_itr, run_dir_and_file
from spinppo.tools.replay import make_run_env, read_env_spec
from spinppo.utils.errors import OneLineParser, UserError, first_line
from spinppo.utils.logx import atomic_write, read_run_config


def export_onnx(run_dir: str, out: str, itr: int | str | None = "last") -> str:
    """Write the policy of ``run_dir`` (a run directory, or one of its ``pyt_save/model*.pt`` files;
    ``itr`` "last" or N as for test_policy) to ``out`` (an .onnx path) and return ``out``.

    A Unity run gets ML-Agents' form, any other run the generic form (see the module's doc). A gymnasium
    run's environment is made once, for its action space's bounds and ``start``. Bad input (not a run, no
    checkpoint, an output path that cannot be written, a network the exporter cannot write) is a UserError.
    """
    if osp.splitext(out)[1].lower() != ".onnx":
        raise UserError(f"--onnx must name an .onnx file (Unity imports models by that suffix), not {out!r}")
    if osp.isdir(out):
        raise UserError(
            f"--onnx {out} is a directory: give a file name such as {osp.join(out, 'policy.onnx')}"
        )
    run, file = run_dir_and_file(run_dir)
    checkpoint = file or find_checkpoint(run, itr)
    ac, _ = load_policy(checkpoint, deterministic=True)
    check_network(ac)  # first: a network it cannot write is refused in one line, whatever its env
    spec = read_env_spec(run)
    metadata = metadata_for(spec["kind"], spec, ac.ctor_spec, osp.abspath(checkpoint))
    if spec["kind"] == "unity":
        shapes = read_run_config(run).get("observation_shapes")
        if not isinstance(shapes, list) or not shapes:
            raise UserError(
                f"{osp.join(run, 'config.json')} has no observation_shapes (runs from before export saved "
                'them): add "observation_shapes": [[n0], [n1], ...], one per sensor in Unity\'s order'
            )
        try:
            model = unity_model(ac, shapes, metadata)
        except (TypeError, ValueError) as e:
            raise UserError(
                f"{osp.join(run, 'config.json')}: bad observation_shapes ({first_line(e)})"
            ) from None
        act_space = None
    else:
        env = make_run_env(spec)
        try:
            check_spaces(env, ac.ctor_spec, run)
            act_space = env.action_space
        finally:
            env.close()
        model = gym_model(ac, act_space, metadata)
    data = model.SerializeToString()
    _verify(data, ac, act_space)
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as e:
        raise UserError(
            f"cannot write {out} ({e.strerror or first_line(e)}): choose another --onnx"
        ) from None
    return out


def _verify(data: bytes, ac: Any, act_space: Any) -> None:
    """Run the graph with onnxruntime on observations around the normalisation statistics and compare its
    deterministic actions with the torch policy's (random pixels for images): a wrong graph fails here,
    not in the user's game."""
    layout = ac.layout
    rng = np.random.default_rng(0)
    n = 64
    vectors = None
    if layout.vector_dim:  # all vector parts side by side, around obs_rms's statistics
        dim = layout.vector_dim
        mean = ac.obs_rms.mean.numpy() if ac.norm_obs else np.zeros(dim)
        std = np.sqrt(ac.obs_rms.var.numpy()) if ac.norm_obs else np.ones(dim)
        vectors = (mean + std * rng.normal(size=(n, dim)) * 2).astype(np.float32)
    if layout.flat:
        return _compare(data, ac, act_space, vectors)
    parts, start = {}, 0
    for p in layout.parts:
        if p.image and p.dtype == np.uint8:
            parts[p.key] = rng.integers(0, 256, (n, *p.shape), dtype=np.uint8)
        elif p.image:
            parts[p.key] = rng.random((n, *p.shape), dtype=np.float32)
        else:
            parts[p.key] = vectors[:, start : start + p.size].reshape(n, *p.shape)
            start += p.size
    _compare(data, ac, act_space, parts if layout.is_dict else parts[None])


def _compare(data: bytes, ac: Any, act_space: Any, obs: np.ndarray) -> None:
    """The graph's deterministic actions against the torch policy's; a recurrent policy's over a few steps
    (the observations shuffled each step), its memories carried on both sides and compared too."""
    import tempfile

    import torch

    from spinppo.envs.spaces import action_for_env

    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(data)
        f.flush()
        policy = OnnxPolicy(f.name)
        layout = ac.layout
        count = layout.batch_size(obs)
        # Both sides' memories (None without memory), carried from step to step
        memory = np.zeros((count, ac.memory_size), np.float32) if ac.memory_size else None
        theirs = ac.initial_memory(count) if ac.memory_size else None
        for step in range(4 if ac.memory_size else 1):
            x = obs if step == 0 else layout.take(obs, np.random.default_rng(step).permutation(count))
            with torch.no_grad():
                want, theirs = ac.act(layout.to_torch(x), deterministic=True, memory=theirs)
            want = want.numpy()
            got, memory = policy.act(x, deterministic=True, memory=memory)
            if memory is not None and not np.allclose(memory, theirs.numpy(), rtol=1e-4, atol=1e-4):
                raise RuntimeError(
                    "the exported graph's memory differs from the torch policy's: please report"
                )
            if act_space is None:  # the Unity form: clipped to [-1, 1], one column per branch
                want = np.clip(want, -1, 1) if not ac.discrete else want.reshape(count, -1)
            else:
                want = action_for_env(act_space)(want)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError(
                    "the exported graph's actions differ from the torch policy's: please report this"
                )


def describe(path: str) -> str:
    """One line per input and output of the .onnx file at ``path``: name, shape and element type."""
    onnx_policy = OnnxPolicy(path)
    session = onnx_policy.session
    rows = [f"  input  {i.name} {i.shape} {i.type}" for i in session.get_inputs()]
    rows += [f"  output {o.name} {o.shape} {o.type}" for o in session.get_outputs()]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The ``export`` command's flags."""
    p = OneLineParser(
        prog="python -m spinppo.run export",
        description="Export a run's policy as an ONNX file (ML-Agents' form for Unity runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("fpath", help="the run directory (it holds config.json and pyt_save/)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--itr", "-i", default="last", help="checkpoint: 'last' or N for pyt_save/model<N>.pt")
    return p


def main(argv: Sequence[str]) -> int:
    """``python -m spinppo.run export RUN_DIR --onnx OUT.onnx``; bad input raises UserError."""
    args = build_parser().parse_args(list(argv))
    out = export_onnx(args.fpath, args.onnx, parse_itr(args.itr))
    form = "Unity ML-Agents form" if OnnxPolicy(out).form == "unity" else "generic form"
    print(f"Exported the policy of {args.fpath} to {out} ({form}):\n{describe(out)}", flush=True)
    return 0
