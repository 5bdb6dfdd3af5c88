"""ML-Agents ``environment_parameters`` (constants, samplers, curricula) as mlagents-learn sends them.

``check_environment_parameters`` checks the section of a trainer YAML file (release 19/20 schema, as
``mlagents.trainers.settings.EnvironmentParameterSettings.structure`` parses it) and returns its normalised
form, plain JSON that config.json keeps and that the check accepts again unchanged::

    {NAME: {"curriculum": [{"name": LESSON, "value": SAMPLER, "completion_criteria": CRITERIA or None}]}}
    SAMPLER  = {"sampler_type": "constant" | "uniform" | "gaussian" | "multirangeuniform",
                "sampler_parameters": {"seed": int (-1: from the run seed), ...the type's keys...}}
    CRITERIA = {"behavior": str, "measure": "reward" | "progress", "threshold": float,
                "min_lesson_length": int, "signal_smoothing": bool, "require_reset": bool}

A parameter without a curriculum is a curriculum of one lesson named after it (as in ML-Agents), so a
constant ``gravity: -9.8`` becomes ``{"curriculum": [{"name": "gravity", "value": {"sampler_type":
"constant", "sampler_parameters": {"seed": -1, "value": -9.8}}, "completion_criteria": None}]}``.

``EnvironmentParameterManager`` keeps the lesson of each parameter and decides when a lesson is complete,
as ML-Agents' class of that name does (``environment_parameter_manager.py``); the Unity adapter sends its
``current_samplers()`` through the EnvironmentParametersChannel (launch.py). Nothing here imports
mlagents_envs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from spinppo.utils.errors import UserError

logger = logging.getLogger(__name__)

# sampler_type -> its sampler_parameters and their defaults (ML-Agents' ConstantSettings, UniformSettings,
# GaussianSettings, MultiRangeUniformSettings; every one also has ``seed``, default -1).
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.0},
    "uniform": {"min_value": 0.0, "max_value": 1.0},
    "gaussian": {"mean": 1.0, "st_dev": 1.0},
    "multirangeuniform": {"intervals": [[0.0, 1.0]]},
}
CRITERIA_DEFAULTS: dict[str, Any] = {
    "measure": "reward",
    "threshold": 0.0,
    "min_lesson_length": 0,
    "signal_smoothing": True,
    "require_reset": False,
}
INT32 = (-(2**31), 2**31 - 1)  # seeds travel as int32


class _Checker:
    """Raises one-line UserErrors that name the file and the key path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> None:
        raise UserError(f"{self.where}: {path} {problem}")

    def mapping(self, value: Any, path: str, what: str) -> Mapping:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be {what}, not {value!r}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"has a key {key!r} that is not a string")
        return value

    def only(self, value: Mapping, path: str, allowed: Sequence[str]) -> None:
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"is not a key ML-Agents knows here (known: {', '.join(allowed)})")

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(path, f"must be a finite number, not {value!r}")
        return float(value)

    def integer(self, value: Any, path: str, low: int | None = None, high: int | None = None) -> int:
        # A whole float (100.0) is accepted, as ML-Agents' cattr int() conversion accepts it.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            self.fail(path, f"must be a whole number, not {value!r}")
        n = int(value)
        if (low is not None and n < low) or (high is not None and n > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            self.fail(path, f"must be {bounds}, not {n}")
        return n

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {value!r}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, not {value!r}")
        return value


def check_environment_parameters(section: Any, where: str) -> dict[str, Any]:
    """Check an ``environment_parameters`` section (``section``, as YAML or config.json loaded it) and
    return its normalised form (see the module doc): a new plain-JSON dict, ``{}`` for None or empty.

    ``where`` names the file in error messages. Every bad value, unknown key or missing key is a one-line
    UserError such as ``"x.yaml: environment_parameters.wall.curriculum[1].completion_criteria.measure
    must be reward or progress, not 'steps'"``. Accepted, as ML-Agents accepts them: a number (a constant);
    ``{sampler_type, sampler_parameters}``; ``{curriculum: [lessons]}``, each lesson ``{name, value,
    completion_criteria}`` with a number or a sampler as ``value``. The normalised form is accepted again
    and comes back equal.
    """
    check = _Checker(where)
    if section is None:
        return {}
    check.mapping(section, "environment_parameters", "a mapping of parameter names")
    out: dict[str, Any] = {}
    for name, config in section.items():
        path = f"environment_parameters.{name}"
        if isinstance(config, Mapping) and "curriculum" in config:
            check.only(config, path, ["curriculum"])
            lessons = config["curriculum"]
            if not isinstance(lessons, list) or not lessons:
                check.fail(f"{path}.curriculum", f"must be a non-empty list of lessons, not {lessons!r}")
            normalised = [
                _check_lesson(check, lesson, f"{path}.curriculum[{i}]") for i, lesson in enumerate(lessons)
            ]
            for i, lesson in enumerate(normalised[:-1]):
                if lesson["completion_criteria"] is None:
                    check.fail(
                        f"{path}.curriculum[{i}]",
                        "needs a completion_criteria: only the last lesson may go without one",
                    )
            if normalised[-1]["completion_criteria"] is not None:
                # ML-Agents warns and ignores it (the last lesson never completes); the normalised form
                # drops it, so that checking that form again does not warn again.
                logger.warning("%s: %s: the last lesson's completion_criteria is ignored", where, path)
                normalised[-1]["completion_criteria"] = None
            out[name] = {"curriculum": normalised}
        else:
            sampler = _check_sampler(check, config, path)
            out[name] = {"curriculum": [{"name": name, "value": sampler, "completion_criteria": None}]}
    return out


def _check_lesson(check: _Checker, lesson: Any, path: str) -> dict[str, Any]:
    check.mapping(lesson, path, "a lesson (name, value, completion_criteria)")
    check.only(lesson, path, ["name", "value", "completion_criteria"])
    for key in ("name", "value"):
        if key not in lesson:
            check.fail(path, f"needs a {key}")
    criteria = lesson.get("completion_criteria")
    return {
        "name": check.string(lesson["name"], f"{path}.name"),
        "value": _check_sampler(check, lesson["value"], f"{path}.value"),
        "completion_criteria": None if criteria is None else _check_criteria(check, criteria, path),
    }


def _check_criteria(check: _Checker, criteria: Any, lesson_path: str) -> dict[str, Any]:
    path = f"{lesson_path}.completion_criteria"
    check.mapping(criteria, path, "a mapping (behavior, measure, threshold, ...)")
    check.only(criteria, path, ["behavior", *CRITERIA_DEFAULTS])
    if "behavior" not in criteria:
        check.fail(path, "needs a behavior (the behavior name whose episodes or steps are measured)")
    c = {**CRITERIA_DEFAULTS, **criteria}
    measure = c["measure"]
    if measure not in ("reward", "progress"):
        check.fail(f"{path}.measure", f"must be reward or progress, not {measure!r}")
    threshold = check.number(c["threshold"], f"{path}.threshold")
    if measure == "progress" and not 0.0 <= threshold <= 1.0:
        check.fail(
            f"{path}.threshold", f"must be between 0 and 1 when the measure is progress, not {threshold:g}"
        )
    return {
        "behavior": check.string(c["behavior"], f"{path}.behavior"),
        "measure": measure,
        "threshold": threshold,
        "min_lesson_length": check.integer(c["min_lesson_length"], f"{path}.min_lesson_length", 0),
        "signal_smoothing": check.boolean(c["signal_smoothing"], f"{path}.signal_smoothing"),
        "require_reset": check.boolean(c["require_reset"], f"{path}.require_reset"),
    }


def _check_sampler(check: _Checker, value: Any, path: str) -> dict[str, Any]:
    """A number (a constant) or ``{sampler_type, sampler_parameters}``, normalised to the latter."""
    if not isinstance(value, Mapping):
        number = check.number(value, path)  # the error for a string, a list, a bool, null
        return {"sampler_type": "constant", "sampler_parameters": {"seed": -1, "value": number}}
    check.mapping(value, path, "a number or a sampler")
    if "value" in value and "sampler_type" not in value:
        check.fail(
            path,
            f"is {dict(value)!r}: ML-Agents takes a constant as a plain number ({path.split('.')[-1]}: "
            f"{value['value']!r}) or as sampler_type: constant with sampler_parameters: {{value: ...}}",
        )
    check.only(value, path, ["sampler_type", "sampler_parameters"])
    if "sampler_type" not in value:
        check.fail(
            path,
            "needs a sampler_type (constant, uniform, gaussian or multirangeuniform), or write the constant "
            "as a plain number",
        )
    kind = value["sampler_type"]
    if kind not in SAMPLER_DEFAULTS:
        check.fail(f"{path}.sampler_type", f"must be one of {', '.join(SAMPLER_DEFAULTS)}, not {kind!r}")
    if "sampler_parameters" not in value:
        check.fail(path, f"needs sampler_parameters ({', '.join(['seed', *SAMPLER_DEFAULTS[kind]])})")
    ppath = f"{path}.sampler_parameters"
    given = check.mapping(value["sampler_parameters"], ppath, "a mapping")
    check.only(given, ppath, ["seed", *SAMPLER_DEFAULTS[kind]])
    p = {"seed": -1, **SAMPLER_DEFAULTS[kind], **given}
    out: dict[str, Any] = {"seed": check.integer(p["seed"], f"{ppath}.seed", *INT32)}
    if kind == "multirangeuniform":
        out["intervals"] = _check_intervals(check, p["intervals"], f"{ppath}.intervals")
    else:
        for key in SAMPLER_DEFAULTS[kind]:
            out[key] = check.number(p[key], f"{ppath}.{key}")
    if kind == "uniform" and out["min_value"] > out["max_value"]:
        check.fail(
            f"{ppath}.min_value", f"({out['min_value']:g}) is greater than max_value ({out['max_value']:g})"
        )
    if kind == "gaussian" and out["st_dev"] < 0:
        check.fail(f"{ppath}.st_dev", f"must not be negative, not {out['st_dev']:g}")
    return {"sampler_type": kind, "sampler_parameters": out}


def _check_intervals(check: _Checker, intervals: Any, path: str) -> list[list[float]]:
    if not isinstance(intervals, list) or not intervals:
        check.fail(path, f"must be a non-empty list of [min, max] pairs, not {intervals!r}")
    out = []
    for i, interval in enumerate(intervals):
        if not isinstance(interval, (list, tuple)) or len(interval) != 2:
            check.fail(f"{path}[{i}]", f"must be a [min, max] pair, not {interval!r}")
        low, high = (check.number(v, f"{path}[{i}]") for v in interval)
        if low > high:
            check.fail(f"{path}[{i}]", f"has its minimum {low:g} greater than its maximum {high:g}")
        out.append([low, high])
    if sum(high - low for low, high in out) <= 0:
        # Unity picks an interval with probability proportional to its length: all empty divides by zero.
        check.fail(path, "have no length in total: give at least one interval with min < max")
    return out


def behavior_base_name(name: str) -> str:
    """A Unity behavior name without its ``?team=N`` suffix (``Walker?team=0`` -> ``Walker``): what ML-Agents
    calls the brain name, and what a completion_criteria's ``behavior`` names."""
    return name.split("?", 1)[0]


class EnvironmentParameterManager:
    """The lesson of each environment parameter, and when it moves on: ML-Agents' class of the same name.

    ``settings`` is ``check_environment_parameters``' result. ``run_seed`` seeds every sampler whose file
    gives no seed (``seed: -1`` or none): the n-th lesson value without one, counted over all parameters'
    lessons in file order, gets ``run_seed + n`` (ML-Agents' ``_set_sampler_seeds``, where constants count
    too). ``lessons`` (name -> lesson number) starts parameters at later lessons, e.g. for a replay.

    What to send: ``current_samplers()``. When: ``update(progress, episode_returns)`` after each epoch.
    Resume: ``state_dict()`` / ``load_state_dict()``. Logging: ``lesson_numbers()``.
    """

    def __init__(
        self, settings: Mapping[str, Any], run_seed: int, lessons: Mapping[str, int] | None = None
    ) -> None:
        self.settings = check_environment_parameters(settings, "environment_parameters")
        self.run_seed = int(run_seed)
        self._seeds: dict[str, list[int]] = {}
        offset = 0
        for name, parameter in self.settings.items():
            seeds = []
            for lesson in parameter["curriculum"]:
                seed = lesson["value"]["sampler_parameters"]["seed"]
                if seed == -1:
                    seed = self.run_seed + offset
                    offset += 1
                seeds.append(seed)
            self._seeds[name] = seeds
        self._lessons = {name: 0 for name in self.settings}
        # ML-Agents keeps one smoothed value per parameter, from 0.0, never reset when a lesson changes.
        self._smoothed = {name: 0.0 for name in self.settings}
        # The trainer's reward buffer: the latest episode returns, at most reward_buffer_size of them.
        self._returns: list[float] = []
        self.reward_buffer_size = max(
            [1]
            + [
                lesson["completion_criteria"]["min_lesson_length"]
                for parameter in self.settings.values()
                for lesson in parameter["curriculum"]
                if lesson["completion_criteria"] is not None
            ]
        )
        if lessons:
            self._set_lessons(lessons, "lessons")

    def _set_lessons(self, lessons: Mapping[str, int], what: str) -> None:
        unknown = set(lessons) - set(self.settings)
        if unknown:
            raise UserError(
                f"{what} names environment parameters {sorted(unknown)} that the run does not have"
            )
        for name, number in lessons.items():
            count = len(self.settings[name]["curriculum"])
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < count:
                raise UserError(f"{what}: lesson {number!r} of {name!r} does not exist (it has {count})")
            self._lessons[name] = number

    def __bool__(self) -> bool:
        return bool(self.settings)

    def behaviors(self) -> set[str]:
        """The behavior names the completion criteria measure (each lesson but the last one's)."""
        return {
            lesson["completion_criteria"]["behavior"]
            for parameter in self.settings.values()
            for lesson in parameter["curriculum"][:-1]
        }

    def has_curriculum(self) -> bool:
        """True when some parameter has more than one lesson (``update`` can change something)."""
        return any(len(p["curriculum"]) > 1 for p in self.settings.values())

    def lesson_numbers(self) -> dict[str, int]:
        """Each parameter's current lesson number (0 first): ML-Agents logs them as
        ``Environment/Lesson Number/<name>``."""
        return dict(self._lessons)

    def current_samplers(self) -> dict[str, dict[str, Any]]:
        """What to send now: parameter name -> ``{"sampler_type", "sampler_parameters"}`` of its current
        lesson, with the seed resolved (never -1). ML-Agents sends all of them, changed or not, at each reset
        and whenever a lesson changes; ``launch.queue_environment_parameters`` turns them into
        EnvironmentParametersChannel messages (a constant is ``set_float_parameter``)."""
        out = {}
        for name, parameter in self.settings.items():
            number = self._lessons[name]
            value = parameter["curriculum"][number]["value"]
            params = dict(value["sampler_parameters"], seed=self._seeds[name][number])
            out[name] = {"sampler_type": value["sampler_type"], "sampler_parameters": params}
        return out

    def describe(self) -> str:
        """One line naming each parameter's lesson, for the log."""
        parts = []
        for name, number in self._lessons.items():
            curriculum = self.settings[name]["curriculum"]
            if len(curriculum) > 1:
                parts.append(f"{name}: lesson {number} {curriculum[number]['name']!r}")
        return ", ".join(parts)

    def update(self, progress: float, episode_returns: Sequence[float]) -> tuple[bool, bool]:
        """Add the returns of the episodes finished since the last call and move any parameter whose lesson
        is complete to its next lesson; return ``(any lesson changed, a reset is required)``.

        ``progress`` is the fraction of training done (steps so far / total steps; ML-Agents' trainer step /
        max_steps). ``episode_returns`` are the undiscounted, unscaled environment returns of the trained
        behavior's finished episodes (terminated or interrupted), in the order they ended; on several ranks,
        every rank must pass the same (all ranks' returns, gathered in rank order) so that all agree.

        ML-Agents' rules (``CompletionCriteriaSettings.need_increment``), per parameter whose lesson has a
        completion_criteria and a next lesson:

        - the reward buffer holds the latest ``reward_buffer_size`` returns (the largest min_lesson_length
          of any lesson, at least 1) and is emptied whenever any lesson changes;
        - nothing changes while the buffer holds fewer than ``min_lesson_length`` returns (for either
          measure);
        - ``progress``: the lesson is complete when progress > threshold;
        - ``reward``: measure = mean of the buffer (none yet, or NaN: no change); with signal_smoothing,
          measure = 0.25 * previous smoothed value + 0.75 * measure, kept as the new smoothed value (it
          starts at 0.0 and is updated at every call); complete when measure > threshold;
        - a completed lesson whose criteria say ``require_reset`` asks for a reset.

        Where spinppo differs: ML-Agents checks after every environment step, spinppo once per call (once
        an epoch), so a lesson changes only between epochs and the smoothing averages over calls, not steps
        (it reaches the buffer's mean a few epochs later instead of a few steps later).
        """
        self._returns = (self._returns + [float(r) for r in episode_returns])[-self.reward_buffer_size :]
        changed = reset = False
        for name, parameter in self.settings.items():
            number = self._lessons[name]
            curriculum = parameter["curriculum"]
            criteria = curriculum[number]["completion_criteria"]
            if criteria is None or number + 1 >= len(curriculum):
                continue
            done, self._smoothed[name] = _need_increment(
                criteria, float(progress), self._returns, self._smoothed[name]
            )
            if done:
                self._lessons[name] = number + 1
                changed = True
                reset |= criteria["require_reset"]
                logger.info(
                    "environment parameter %r: lesson %d %r", name, number + 1, curriculum[number + 1]["name"]
                )
        if changed:
            self._returns = []  # ML-Agents clears every trainer's reward buffer when a lesson changes
        return changed, reset

    def state_dict(self) -> dict[str, Any]:
        """Everything ``update`` depends on, as plain JSON values: lessons, smoothed values, reward buffer."""
        return {
            "lessons": dict(self._lessons),
            "smoothed": dict(self._smoothed),
            "reward_buffer": list(self._returns),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s values (a checkpoint of the same settings); a UserError when they do not
        fit these settings (another run's checkpoint, an edited file)."""
        try:
            lessons, smoothed, returns = state["lessons"], state["smoothed"], state["reward_buffer"]
            if set(lessons) != set(self.settings) or set(smoothed) != set(self.settings):
                raise UserError(
                    f"the checkpoint's environment parameters {sorted(lessons)} are not the run's "
                    f"{sorted(self.settings)}"
                )
            self._set_lessons({k: lessons[k] for k in self.settings}, "the checkpoint's lessons")
            self._smoothed = {k: float(smoothed[k]) for k in self.settings}
            self._returns = [float(r) for r in returns][-self.reward_buffer_size :]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"the checkpoint's environment parameter state is damaged ({e!r})") from None


def _need_increment(
    criteria: Mapping[str, Any], progress: float, returns: Sequence[float], smoothing: float
) -> tuple[bool, float]:
    """ML-Agents' ``CompletionCriteriaSettings.need_increment``: (lesson complete, new smoothed value)."""
    if len(returns) < criteria["min_lesson_length"]:
        return False, smoothing
    if criteria["measure"] == "progress":
        return progress > criteria["threshold"], smoothing
    if len(returns) < 1:
        return False, smoothing
    measure = sum(returns) / len(returns)  # NaN (inf - inf) counts as no measure, as in ML-Agents
    if math.isnan(measure):
        return False, smoothing
    if criteria["signal_smoothing"]:
        measure = 0.25 * smoothing + 0.75 * measure
        smoothing = measure
    return measure > criteria["threshold"], smoothing
