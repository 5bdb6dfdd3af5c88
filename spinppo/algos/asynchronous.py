"""Asynchronous updates over MPI (A3C's): no rank ever waits for another rank's environments.

Rank 0 is the *parameter rank*: it holds the shared parameters with their optimizer (A3C's "shared
RMSProp") and observation statistics, the step count, the log and the checkpoints. It also steps
environments like every other rank, and between two of its own steps it takes in the gradients that have
arrived::

    every rank   collect a rollout with its copy of the parameters (version v) -> gradient g
                 send (g, v, the rollout's statistics) to rank 0; load the newest parameters rank 0
                 has sent back (waiting only while two of its gradients are unanswered)
    rank 0       for each gradient: apply it (one optimizer step, version + 1) unless it was computed on
                 parameters more than max_staleness versions old (then drop it, and count it); send the
                 current parameters back; log a row whenever the ranks' steps complete an epoch

A rank has at most two gradients in flight (``IN_FLIGHT``): it takes whatever answers have arrived after
each rollout, and waits only when two are still unanswered, i.e. when rank 0 has not come round to its
gradient within two of the rank's own rollouts (rank 0 answers between its own environment steps, and
while it computes or applies its own gradient it answers no one). Its parameters lag rank 0's by the
updates applied since the answer it last took.

Messages go over a communicator of their own (``MPI_Comm_dup``); waits poll with a short sleep instead of
MPI's busy-polling, so a waiting rank leaves its core to the others. At the end (the last epoch, a
signal, ``--stop_at_return``, or a non-finite update) rank 0 answers every gradient still to come with
"stop"; a rank that gets it takes the answers to its other gradients in flight and sends a last, empty
message; once rank 0 has every rank's, all ranks meet once and leave with rank 0's parameters, bit for
bit.

What a resume restores: the shared parameters, optimizer and observation statistics, the step and
version counts and the best evaluation, from the last epoch's checkpoint. The environments start new
episodes, each rank's generators are reseeded, each rank's reward scaler (``--norm_reward``; rank-local
in A3C) starts afresh, and the order in which gradients arrive is not reproducible, so a resumed (or
repeated) run does not reproduce an uninterrupted one step for step.

While rank 0 evaluates or writes a checkpoint it takes no gradients: the other ranks finish the rollout
in hand, send its gradient, and wait for the answer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from spinppo.algos.a2c import A2CStats
from spinppo.algos.checkpoint import Checkpointer
from spinppo.algos.onpolicy import (
    EpochState,
    Evaluation,
    OnPolicyRun,
    Schedule,
    checkpoint_and_report,
    divergence_message,
    log_row_end,
    log_row_start,
    rollout_vectors,
    stopped_by_signal,
    train_return_reached,
)
from spinppo.core.buffer import Batch, real_steps
from spinppo.utils.errors import TrainingDiverged
from spinppo.utils.mpi_pytorch import load_state_vectors, state_vectors, sync_params
from spinppo.utils.mpi_tools import TimedComm, broadcast, num_procs, proc_id

GRADIENT, PARAMETERS = 1, 2  # message tags
POLL = 0.0005  # seconds between two looks for a message while waiting
IN_FLIGHT = 2  # gradients a rank may have sent without an answer before it waits for one


def flat_gradient(module: torch.nn.Module) -> np.ndarray:
    """Every parameter's gradient in one float32 array (zeros where a parameter has none)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in module.parameters()]
    ).numpy()


@dataclass(slots=True)
class AsyncEpochState(EpochState):
    """Rank 0's epoch: ``EpochState``'s counters over every rank's reports, and A3C's own."""

    end_step: int = 0  # the total step count that completes this epoch
    wait_time: float = 0.0  # seconds the other ranks waited for rank 0's answers, summed
    dropped: int = 0  # gradients too stale to apply


# The algorithm's columns of A3C's row, after the evaluation's: the A2C loss's statistics (A3C's loss is
# a2c_loss), then how stale the applied gradients were.
LOG_KEYS = [*A2CStats._fields, "Staleness"]


class AsyncTraining:
    """A3C's training loop around an ``OnPolicyRun`` (which built the environments, actor-critic, buffer,
    worker and logger the same way as for the synchronous algorithms); rank 0 adds its own parts: the
    shared parameters, their optimizer, the evaluation and the checkpointer.

    ``gradient(batch)`` computes the loss of one rollout's batch on ``run.ac`` and calls ``backward()``;
    it returns the statistics to log (``LossPi``...). ``make_optimizer(params)`` builds the shared
    optimizer (on rank 0 only). Rank 0 logs a row whenever the ranks' steps add up to another
    ``steps_per_epoch``. Flags are assumed checked.
    """

    def __init__(
        self,
        run: OnPolicyRun,
        make_optimizer: Callable[[Any], torch.optim.Optimizer],
        max_grad_norm: float,
        max_staleness: int,
        norm_adv: bool,
        env_fn: Callable[[], Any] | None = None,
        eval_freq: int = 0,
        eval_episodes: int = 10,
        stop_at_return: float | None = None,
        seed: int = 0,
        stop_at_train_return: float | None = None,
        steps_per_epoch: int = 4000,
        eval_deterministic: bool = True,
    ) -> None:
        self.run, self.ac = run, run.ac
        self.comm = TimedComm(MPI.COMM_WORLD.Dup())  # a collective: every rank builds one
        self.max_grad_norm, self.max_staleness, self.norm_adv = max_grad_norm, max_staleness, norm_adv
        self.steps_per_epoch, self.stop_at_train_return = steps_per_epoch, stop_at_train_return
        self.rank0 = proc_id() == 0
        self.version = 0  # of the parameters this rank holds (rank 0: of the shared ones)
        self.wait_time = 0.0  # seconds this rank waited for rank 0's answers (not yet reported)
        self.evaluation: Evaluation | None = None
        if self.rank0:
            self.shared = copy.deepcopy(run.ac)
            self.optimizer = make_optimizer(self.shared.parameters())
            self.shared_params = list(self.shared.parameters())
            # Rank 0 saves the shared parts, alone; its log holds every rank's values (sent to it).
            self.checkpointer = Checkpointer(
                run.logger,
                self.shared,
                run.worker,
                run.reward_scaler,
                run.keep_checkpoints,
                {"optimizer": self.optimizer},
                run.run_state,
                parameter_manager=run.lessons,
                alone=True,
            )
            run.logger.across_ranks = False
            if eval_freq:
                self.evaluation = Evaluation(
                    env_fn,
                    self.shared,
                    eval_freq,
                    eval_episodes,
                    seed,
                    stop_at_return,
                    alone=True,
                    deterministic=eval_deterministic,
                )
            self.applied_by_rank = np.zeros(num_procs(), dtype=np.int64)
            self.stop_reason: str | None = None  # "done", "signal", "return" or "diverged"
            self.message = ""  # a divergence's
            self.stopped = 0  # ranks that have sent their last message
            self.replies: list[MPI.Request] = []
            self._signal = 0  # the first stop signal any rank reported
        else:  # (for the resume alone: the shared parts are rank 0's)
            self.checkpointer = Checkpointer(
                run.logger,
                run.ac,
                run.worker,
                run.reward_scaler,
                run.keep_checkpoints,
                {},
                run.run_state,
                parameter_manager=run.lessons,
            )

    # --------------------------------------------------------------------------------- every rank

    def train(self, gradient: Callable[[Batch], dict[str, float]], epochs: int, save_freq: int) -> None:
        """Run until rank 0 has logged ``epochs`` epochs (or stops early); leave with rank 0's parameters
        on every rank. Raises TrainingStopped after a signal and TrainingDiverged after a non-finite
        update, on every rank."""
        self._start(epochs, save_freq)
        sent: list[MPI.Request] = []  # this rank's gradients whose answers it has not taken yet
        while not (self.rank0 and self.stop_reason):
            report = self._rollout_and_gradient(gradient)
            if self.rank0:
                if report is not None:
                    self._take(report, source=0)
                self._load(state_vectors(self.shared), self.version)
                continue
            # Take the answers that are here; wait only while IN_FLIGHT gradients are unanswered.
            newest, stop = None, False
            while sent and (len(sent) >= IN_FLIGHT or self.comm.iprobe(source=0, tag=PARAMETERS)):
                answer = self._wait_answer()
                sent.pop(0).wait()  # (answered: received long ago)
                if answer["stop"]:
                    stop = True
                    break
                newest = answer
            if stop:
                break
            sent.append(self.comm.isend(report, dest=0, tag=GRADIENT))  # (pickled now)
            if newest is not None:
                self._load(newest["state"], newest["version"])
        if not self.rank0:
            # Rank 0 answers "stop" to whatever is still in flight; then a last message says this rank
            # sends no more (messages between two ranks arrive in order).
            for request in sent:
                self._wait_answer()
                request.wait()
            self.comm.isend(None, dest=0, tag=GRADIENT).wait()
        if self.rank0:
            self._finish()
        self._leave()

    def _start(self, epochs: int, save_freq: int) -> None:
        """Resume (a collective), install the signal handlers and make every rank's parameters rank 0's."""
        run = self.run
        run.run_state.update(total_steps=0, version=0)
        # An epoch's row is logged at its total step count, which the checkpoint holds.
        self.schedule: Schedule = run.start(
            epochs, save_freq, self.checkpointer, lambda last: int(run.run_state["total_steps"])
        )
        self.version = int(run.run_state["version"])
        if self.rank0:
            self.ac.load_state_dict(self.shared.state_dict())
        sync_params(self.ac)
        if self.rank0:
            if self.schedule.first_epoch >= epochs:
                self.stop_reason = "done"
            self._begin_epoch(self.schedule.first_epoch)
            run.logger.log(
                f"A3C: rank 0 holds the shared parameters; gradients more than {self.max_staleness} "
                "versions old are dropped"
            )

    def _rollout_and_gradient(self, gradient: Callable[[Batch], dict[str, float]]) -> dict[str, Any] | None:
        """One rollout with this rank's parameters and its gradient, as the message for rank 0 (None on
        rank 0 when the run began to stop during the rollout: its steps are not used)."""
        run, worker, buf = self.run, self.run.worker, self.run.buf
        version = self.version
        stop = self._serve_between_steps if self.rank0 else None
        worker.collect(buf, run.logger, stop)
        if self.rank0 and self.stop_reason is not None:
            # Cut anywhere (a recurrent batch needs whole sequences): dropped, like the others' last ones.
            buf.ptr = 0
            return None
        t0 = time.perf_counter()
        filled, vectors = buf.filled, rollout_vectors(buf)
        moments = None if vectors is None else self.ac.obs_rms.moments(vectors)
        if run.reward_scaler is not None:
            run.reward_scaler.sync(across_ranks=False)  # each rank scales by its own returns' spread
        batch = buf.get(normalize_adv=False)
        if self.norm_adv:  # over this rollout only (its real steps): no rank waits for another's
            adv = batch.adv
            (real,) = real_steps(batch.mask, adv)
            batch.adv = (adv - real.mean()) / (real.std(unbiased=False) + 1e-8)
        self.ac.zero_grad(set_to_none=False)
        stats = gradient(batch)
        report = {
            "version": version,
            "grad": flat_gradient(self.ac),
            "steps": filled * run.num_envs,
            "stats": stats,
            "moments": moments,
            "signal": run.signals.first,
            "wait": self.wait_time,
            "update_time": time.perf_counter() - t0,
        }
        self.wait_time = 0.0
        if not self.rank0:  # rank 0's log has its own episodes already; the others send theirs
            logged = run.logger.epoch_dict
            report["logged"] = {k: logged.pop(k, []) for k in ("EpRet", "EpLen", "VVals")}
        return report

    def _wait_answer(self) -> dict[str, Any]:
        """Rank 0's answer to this rank's last gradient, waiting (without spinning) until it is here."""
        t0 = time.perf_counter()
        while not self.comm.iprobe(source=0, tag=PARAMETERS):
            time.sleep(POLL)
        answer = self.comm.recv(source=0, tag=PARAMETERS)
        self.wait_time += time.perf_counter() - t0
        return answer

    def _load(self, vectors: list[np.ndarray], version: int) -> None:
        load_state_vectors(self.ac, vectors)
        self.version = version

    def _leave(self) -> None:
        """All ranks: take rank 0's parameters (one collective), then stop as rank 0 says."""
        verdict = broadcast(
            (self.stop_reason, self.message, self.state.epoch - 1, self._signal) if self.rank0 else None
        )
        sync_params(self.ac)  # rank 0's copy holds the shared parameters: one copy everywhere
        reason, message, epoch, signum = verdict
        if reason == "diverged":
            raise TrainingDiverged(message)
        if reason == "signal":
            raise stopped_by_signal(signum, epoch, self.run.algo, self.run.output_dir)

    # --------------------------------------------------------------------------------- rank 0

    def _serve_between_steps(self, steps: int) -> bool:
        """Between two of rank 0's own steps: take in the gradients that have arrived. True (end this
        rollout) once the run is stopping."""
        self._serve()
        return self.stop_reason is not None

    def _serve(self) -> None:
        status = MPI.Status()
        while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=GRADIENT, status=status):
            source = status.Get_source()
            report = self.comm.recv(source=source, tag=GRADIENT)
            if report is None:  # that rank has left the loop: it sends nothing more
                self.stopped += 1
                continue
            if self.stop_reason is None:
                self._take(report, source)
            if self.stop_reason is None:
                answer = {"stop": False, "version": self.version, "state": state_vectors(self.shared)}
            else:
                answer = {"stop": True}
            self.replies.append(self.comm.isend(answer, dest=source, tag=PARAMETERS))
        if len(self.replies) > 64:
            self.replies = [r for r in self.replies if not r.Test()]

    def _take(self, report: dict[str, Any], source: int) -> None:
        """One rank's rollout: its statistics into the log, its gradient into the shared parameters
        (unless too stale), and an epoch's row when the steps complete one."""
        t0 = time.perf_counter()
        run, logger, state = self.run, self.run.logger, self.state
        if report["signal"] and not self._signal:
            self._signal = report["signal"]
        for key, values in report.get("logged", {}).items():
            logger.epoch_dict.setdefault(key, []).extend(values)
        if report["moments"] is not None:
            self.shared.obs_rms.add_moments(report["moments"])
        staleness = self.version - report["version"]
        stats = report["stats"]
        if staleness > self.max_staleness:
            state.dropped += 1
        elif not all(np.isfinite(v) for v in stats.values()) or not np.isfinite(report["grad"]).all():
            self._diverge(f"non-finite loss or gradient from rank {source}")
        else:
            grad = torch.from_numpy(report["grad"])
            offset = 0
            for p in self.shared_params:
                p.grad = grad[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            if self.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.shared_params, self.max_grad_norm)
            self.optimizer.step()
            self.version += 1
            self.applied_by_rank[source] += 1
            logger.store(Staleness=staleness, **stats)
            bad = [n for n, p in self.shared.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                self._diverge(f"non-finite {', '.join(bad[:4])} after a gradient of rank {source}")
        state.wait_time += report["wait"]
        state.update_time += report["update_time"] if source == 0 else 0.0
        state.update_time += time.perf_counter() - t0
        state.steps += report["steps"]
        run.run_state["total_steps"] += report["steps"]
        run.run_state["version"] = self.version
        if self.stop_reason is None and run.run_state["total_steps"] >= state.end_step:
            self._end_epoch()

    def _diverge(self, what: str) -> None:
        self.message = divergence_message(what, self.state.epoch, self.run.output_dir)
        self.stop_reason = "diverged"

    def _begin_epoch(self, epoch: int) -> None:
        end_step = (epoch + 1) * self.steps_per_epoch
        self.state = AsyncEpochState.begin(epoch, self.run.worker, self.comm.seconds, end_step=end_step)

    def _end_epoch(self) -> None:
        """Rank 0: the epoch's row (every rank's episodes), evaluation, the checkpoint when due, and
        whether to stop."""
        run, logger, state, schedule = self.run, self.run.logger, self.state, self.schedule
        epoch = state.epoch
        state.end(self.comm.seconds)
        if run.signals.first and not self._signal:
            self._signal = run.signals.first
        if self.stop_at_train_return is not None:  # rank 0's log holds every rank's episodes
            # (read before log_tabular takes them)
            returns = [float(r) for r in logger.epoch_dict.get("EpRet", [])]
            state.stop = train_return_reached(run.run_state, returns, self.stop_at_train_return)
        log_row_start(logger, epoch, run.run_state["total_steps"])
        if self.evaluation is not None:
            reached = self.evaluation.log(epoch, schedule.is_last(epoch), logger, self.checkpointer)
            state.stop = state.stop or reached
        for key in LOG_KEYS:
            logger.log_tabular(key, average_only=True)
        logger.log_tabular("Dropped", state.dropped)
        logger.log_tabular("WaitTime", state.wait_time / max(1, num_procs() - 1))
        log_row_end(logger, state, state.steps, run.worker, schedule.start_time, run.run_state["total_steps"])

        checkpoint_and_report(schedule, self.checkpointer, epoch, self._signal, state.stop)
        if self._signal:
            self.stop_reason = "signal"
        elif state.stop:
            self.stop_reason = "return"
        elif schedule.is_last(epoch):
            self.stop_reason = "done"
        self._begin_epoch(epoch + 1)

    def _finish(self) -> None:
        """Rank 0, stopping: answer "stop" to every other rank's gradients still to come (they are not
        applied) until each has said it sends no more; then report how many gradients each contributed."""
        while self.stopped < num_procs() - 1:
            self._serve()
            time.sleep(POLL)
        MPI.Request.waitall(self.replies)
        self.replies = []
        counts = " ".join(f"{r}={n}" for r, n in enumerate(self.applied_by_rank))
        self.run.logger.log(f"Gradients applied, by rank: {counts}")
        self.ac.load_state_dict(self.shared.state_dict())

    def close(self) -> None:
        """Close the evaluation environments (rank 0's) and free the communicator (a grid's next run
        makes its own)."""
        if self.evaluation is not None:
            self.evaluation.close()
        self.comm.Free()
