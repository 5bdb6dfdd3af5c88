"""The parts of ``spinppo.algos.onpolicy`` on one rank, in this process: a run's epochs and its resume, the
stop signals, the progress line and the divergence message (the behaviour under mpirun is in
test_failures.py, test_preempt.py and test_a3c.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from spinppo.algos.onpolicy import OnPolicyRun, Schedule, StopSignals, divergence_message
from spinppo.envs.registry import EnvFactory


def small_run(out: str, resume: bool = False) -> OnPolicyRun:
    logger_kwargs = dict(output_dir=out, tensorboard=False, resume=resume)
    return OnPolicyRun(
        EnvFactory("CartPole-v1"),
        ac_kwargs=dict(hidden_sizes=(8,)),
        steps_per_epoch=64,
        num_envs=2,
        logger_kwargs=logger_kwargs,
        config={"seed": 0},  # (config.json: a run directory that can be resumed)
    )


def train(run: OnPolicyRun, epochs: int, optimizer: torch.optim.Optimizer) -> list[int]:
    """The synchronous epoch loop with one optimizer step a rollout (on a weight penalty: the batch's
    contents do not matter here)."""
    done = []
    for epoch in run.epochs(epochs, 1, {"optimizer": optimizer}):
        run.collect()
        optimizer.zero_grad()
        loss = sum(p.pow(2).sum() for p in run.ac.parameters())
        loss.backward()
        optimizer.step()
        run.after_update({"LossV": loss.item()})
        run.run_state["last_epoch"] = epoch  # an algorithm's own counter, as PPO's kl_coeff
        run.end_epoch(epoch, ["LossV"])
        done.append(epoch)
    return done


def test_a_resumed_run_restores_its_counters_in_place_with_the_optimizer(tmp_path):
    """The checkpointer saves and restores the dict the run holds (A3C and PPO read it as run_state),
    and the optimizers given to ``epochs``; the resumed run goes on after the checkpoint's epoch."""
    with small_run(str(tmp_path)) as run:
        optimizer = torch.optim.Adam(run.ac.parameters(), lr=1e-3)
        assert train(run, 2, optimizer) == [0, 1]
        assert run.checkpointer.run_state is run.run_state
        saved = {k: v.clone() for k, v in run.ac.state_dict().items()}
        saved_step = float(optimizer.state_dict()["state"][0]["step"])
    with small_run(str(tmp_path), resume=True) as run:
        held = run.run_state
        optimizer = torch.optim.Adam(run.ac.parameters(), lr=1e-3)
        assert train(run, 3, optimizer) == [2]
        assert run.run_state is held and run.checkpointer.run_state is held
        assert held["last_epoch"] == 2 and held["total_steps"] == 3 * 64
        assert float(optimizer.state_dict()["state"][0]["step"]) == saved_step + 1  # restored, then one step
    assert run.schedule.first_epoch == 2 and run.schedule.epochs == 3
    rows = (tmp_path / "progress.txt").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows] == ["Epoch", "0", "1", "2"]
    assert any(not torch.equal(saved[k], v) for k, v in run.ac.state_dict().items())


def test_stop_signals_are_recorded_a_second_ctrl_c_stops_at_once_and_restore_puts_the_old_back():
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signals = StopSignals()
    assert signals.first == 0
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert signals.first == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        signals.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == old


def test_the_progress_line_estimates_the_time_left_from_this_sessions_epochs(capsys):
    now = time.time()
    # A resumed session: epochs 2 and 3 took its 60 seconds; the run began an hour ago.
    schedule = Schedule(10, 5, 2, start_time=now - 3600, session_start=now - 60)
    schedule.print_progress(3)
    assert capsys.readouterr().out == "Epoch 4 of 10: 1:00:00 elapsed, about 0:03:00 left\n"
    schedule.print_progress(3, "stopped: why")
    assert capsys.readouterr().out.splitlines()[1:] == ["stopped: why"]
    assert schedule.is_last(9) and not schedule.is_last(8)


def test_the_divergence_message_says_which_checkpoint_is_kept(tmp_path):
    message = divergence_message("non-finite LossPi", 4, str(tmp_path))
    assert message.startswith("non-finite LossPi in epoch 4: training stopped; no checkpoint had been saved")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000003.pt").write_bytes(b"")
    message = divergence_message("non-finite LossPi", 4, str(tmp_path))
    assert f"the last good checkpoint in {tmp_path}/checkpoints is kept" in message
