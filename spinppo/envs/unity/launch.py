"""Starting a Unity player, and turning what goes wrong with it into one-line ``UserError``s.

Everything about the player process is here: which executable (``resolve_build``), where its log goes
(``player_log_path``), how long to wait for it (``timeout_from_environment``), the side channels that
carry the time scale and environment parameters (``settings_channels``, ``queue_environment_parameters``),
and ``UnityPlayer``, which launches it (gRPC on port ``base_port + worker_id``, listening on loopback
unless ``--unity_listen`` says otherwise: ``listen_host``, ``check_listen_address``) and calls into
mlagents_envs, translating its exceptions into messages that name the problem and the fix.
``mlagents_envs`` is imported only inside functions, and never its ``envs`` or ``registry`` modules
(they reach the internet on import).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinppo.utils.errors import UserError, first_line

TIMEOUT_VARIABLE = "SPINPPO_UNITY_TIMEOUT"
# Where the trainer's gRPC server listens for its player unless --unity_listen says otherwise: loopback only
# (127.0.0.1 and ::1), since spinppo starts the player on the rank's own host and Unity's player connects to
# localhost. mlagents-envs listens on every interface ([::]), where anyone on the network could connect.
DEFAULT_LISTEN = "localhost"


def listen_host(address: str) -> str:
    """The host part of the gRPC server's address for ``address`` (``--unity_listen``): ``localhost``, an
    IPv4 address as it is, an IPv6 address in brackets; a one-line UserError for anything else.

    ``0.0.0.0`` and ``::`` listen on every interface (mlagents-envs' own choice), for a player on another
    host; ``localhost`` (the default) on loopback only.
    """
    text = str(address).strip()
    if text.lower() == "localhost":
        return "localhost"
    try:
        ip = ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        raise UserError(
            f"--unity_listen takes localhost (the default: a player on this host), an IP address of this "
            f"host, or 0.0.0.0 or :: for every interface, not {address!r}"
        ) from None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def check_listen_address(address: str, port: int) -> None:
    """A one-line UserError when no interface of this host has the address ``address`` (``--unity_listen``):
    the gRPC server could not listen there. A port in use is left to mlagents_envs' own check."""
    host = listen_host(address)
    if host == "localhost":
        return
    ip = ipaddress.ip_address(host.strip("[]"))
    if ip.is_unspecified:
        return
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((str(ip), port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"--unity_listen {address}: no network interface of this host has that address (ip addr "
                    "lists them); leave the flag out for a player on this host"
                ) from None


def timeout_from_environment() -> float:
    """Seconds to wait for the player: ``SPINPPO_UNITY_TIMEOUT``, else 60; a UserError if not a number."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "60")
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{TIMEOUT_VARIABLE}={raw!r} is not a number of seconds: fix or unset it") from None


def resolve_build(file_name: str) -> str:
    """The absolute path of the player executable ``file_name`` names, or a UserError saying what is wrong.

    ``file_name`` may also name the build without its extension (Walker for Walker.x86_64) or a macOS
    ``.app``, as mlagents_envs accepts.
    """
    from mlagents_envs.env_utils import validate_environment_path

    path = Path(file_name).expanduser()
    if path.is_dir() and path.suffix != ".app":
        raise UserError(
            f"Unity build {file_name} is a folder: pass the player executable in it, "
            f"e.g. {path / 'Walker.x86_64'}"
        )
    if not path.is_file():
        found = validate_environment_path(str(path))
        if found is None:
            raise UserError(
                f"Unity build {file_name} not found: pass the path of a built player, "
                "e.g. --env unity:/path/to/Walker.x86_64"
            )
        path = Path(found)
    if not os.access(path, os.X_OK):
        raise UserError(f"Unity build {path} is not executable: run chmod +x {path}")
    return str(path.resolve())


def mpi_rank(default: int) -> int:
    """This process's MPI rank when the program has started MPI, else ``default``."""
    mpi = sys.modules.get("mpi4py.MPI")  # only ask MPI when the program already started it
    return mpi.COMM_WORLD.Get_rank() if mpi is not None else default


def player_log_path(log_dir: str | None, worker_id: int) -> str | None:
    """``log_dir/unity_logs/rank<N>.log`` (its folder created), N the MPI rank; None without ``log_dir``.

    Without MPI, N is ``worker_id`` (the local rank).
    """
    if not log_dir:
        return None
    path = Path(log_dir).expanduser().resolve() / "unity_logs" / f"rank{mpi_rank(worker_id)}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def settings_channels(
    time_scale: float, env_kwargs: dict[str, Any] | None, samplers: dict[str, dict[str, Any]] | None = None
) -> list[Any]:
    """The side channels that send ``time_scale`` and the environment parameters with the first reset.

    ``env_kwargs`` maps parameter names to numbers (a UserError otherwise), sent as float parameters;
    ``samplers`` (``EnvironmentParameterManager.current_samplers()``) are the environment_parameters'
    current lesson values, queued after them. Returns mlagents_envs' EngineConfigurationChannel and
    EnvironmentParametersChannel, for ``UnityPlayer.launch``; keep the second to send later lessons.
    """
    from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel
    from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel

    engine = EngineConfigurationChannel()
    engine.set_configuration_parameters(time_scale=float(time_scale))
    parameters = EnvironmentParametersChannel()
    for key, value in (env_kwargs or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"env_kwargs for a Unity build are environment parameters and must be numbers; "
                f"{key}={value!r} is not: fix --env_kwargs"
            )
        parameters.set_float_parameter(str(key), float(value))
    queue_environment_parameters(parameters, samplers or {})
    return [engine, parameters]


def queue_environment_parameters(channel: Any, samplers: dict[str, dict[str, Any]]) -> None:
    """Queue ``samplers`` (name -> ``{"sampler_type", "sampler_parameters"}`` with resolved seeds) on the
    EnvironmentParametersChannel ``channel``, as ML-Agents' ``ParameterRandomizationSettings.apply`` does:
    a constant is a float parameter, a sampler goes with its seed and Unity draws from it each time the
    game reads the parameter. They reach the player with the next exchange (step or reset)."""
    for key, sampler in samplers.items():
        kind, p = sampler["sampler_type"], sampler["sampler_parameters"]
        if kind == "constant":
            channel.set_float_parameter(key, float(p["value"]))
        elif kind == "uniform":
            channel.set_uniform_sampler_parameters(
                key, float(p["min_value"]), float(p["max_value"]), p["seed"]
            )
        elif kind == "gaussian":
            channel.set_gaussian_sampler_parameters(key, float(p["mean"]), float(p["st_dev"]), p["seed"])
        elif kind == "multirangeuniform":
            intervals = [(float(low), float(high)) for low, high in p["intervals"]]
            channel.set_multirangeuniform_sampler_parameters(key, intervals, p["seed"])
        else:  # check_environment_parameters lets no other type through
            raise ValueError(f"unknown sampler_type {kind!r}")


@dataclass(frozen=True)
class UnityPlayer:
    """One Unity player: its executable (as ``resolve_build`` returns it), port, time-out and log file.

    ``launch`` starts it; ``call`` calls into the mlagents_envs environment connected to it. Both raise
    one-line UserErrors naming the player, its port or its log instead of mlagents_envs' exceptions.
    """

    file_name: str
    base_port: int
    worker_id: int
    timeout_wait: float  # seconds to wait for the player to connect, and for each of its answers
    log_path: str | None  # where the player writes its log (-logFile); None: Unity's default Player.log
    listen: str = DEFAULT_LISTEN  # the address the gRPC server listens on (listen_host)

    @property
    def port(self) -> int:
        """The gRPC port the player talks on."""
        return self.base_port + self.worker_id

    def launch(self, seed: int, no_graphics: bool, side_channels: list[Any]) -> Any:
        """Start the player and return the (patched, see mlagents_patch) ``UnityEnvironment`` connected to it.

        ``seed`` goes to Unity's random generator; ``no_graphics`` adds ``-nographics -batchmode``;
        ``side_channels`` are those of ``settings_channels``. The trainer's gRPC server listens on
        ``listen`` (loopback by default).
        """
        from mlagents_envs.environment import UnityEnvironment
        from mlagents_envs.exception import (
            UnityEnvironmentException,
            UnityTimeOutException,
            UnityWorkerInUseException,
        )

        # Imported here, as mlagents_envs is: importing spinppo loads no module of mlagents' (the test
        # test_spinppo_imports_without_touching_mlagents looks for any module named *mlagents*).
        from spinppo.envs.unity import mlagents_patch

        check_listen_address(self.listen, self.port)
        try:
            # Looked up on the module at each call: scripts/bench_unity.py may swap in the stock class.
            environment_class = mlagents_patch.patched_unity_environment(listen_host(self.listen))
            return environment_class(
                file_name=self.file_name,
                worker_id=self.worker_id,
                base_port=self.base_port,
                seed=seed,
                no_graphics=no_graphics,
                # mlagents polls the player every timeout_wait // 10 seconds, so it wants an int.
                timeout_wait=max(1, round(self.timeout_wait)),
                additional_args=["-logFile", self.log_path] if self.log_path else [],
                side_channels=side_channels,
            )
        except UnityWorkerInUseException:
            raise UserError(
                f"port {self.port} (base_port {self.base_port} + worker {self.worker_id}) is in use"
                + ("" if self.listen == DEFAULT_LISTEN else f" on {self.listen}")
                + ", by "
                "another run or a leftover Unity player: pass another --base_port, e.g. "
                f"--base_port {self.base_port + 100}"
            ) from None
        except UnityTimeOutException:
            raise UserError(
                f"the Unity player {self.file_name} did not connect on port {self.port} within "
                f"{self.timeout_wait:g} s: {self.see_log()} (a slow machine: raise {TIMEOUT_VARIABLE})"
            ) from None
        except UnityEnvironmentException as e:
            # mlagents_envs says "... Unity API: <version> ..." when the build speaks another version.
            version = re.search(r"Unity API: (\d+(?:\.\d+)*)", str(e))
            if version:
                raise UserError(
                    f"the Unity build speaks ML-Agents communication version {version[1]} but mlagents_envs "
                    f"{_mlagents_version()} speaks {UnityEnvironment.API_VERSION}: rebuild it with the "
                    "matching com.unity.ml-agents package (release 19, 2.x) or install the matching "
                    "mlagents_envs"
                ) from None
            raise UserError(
                f"the Unity player {self.file_name} failed to start ({first_line(e)}): {self.see_log()}"
            ) from None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, a call that talks to the player; a dead or silent player is a one-line UserError."""
        from mlagents_envs.exception import (
            UnityCommunicatorStoppedException,
            UnityEnvironmentException,
            UnityTimeOutException,
        )

        try:
            return fn(*args)
        except UnityTimeOutException:
            raise UserError(
                f"the Unity player {self.file_name} stopped answering for {self.timeout_wait:g} s: "
                f"{self.see_log()}"
            ) from None
        except (UnityEnvironmentException, UnityCommunicatorStoppedException) as e:
            raise UserError(
                f"the Unity player {self.file_name} quit ({first_line(e)}): {self.see_log()}"
            ) from None

    def see_log(self) -> str:
        """Where an error message sends the user: the player's log file."""
        if self.log_path:
            return f"see the player's log {self.log_path}"
        return (
            "see the player's log (Unity's default Player.log; with a run directory, unity_logs/rank<N>.log)"
        )


def _mlagents_version() -> str:
    import mlagents_envs

    return mlagents_envs.__version__
