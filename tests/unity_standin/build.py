"""Write stand-in "builds": executable files that UnityEnvironment can launch like a Unity player.

A build is a shell script that runs ``player.py`` with this virtualenv's Python and a JSON configuration
saved beside it, so that ``--env unity:PATH`` works under mpirun without passing anything else along.

    python tests/unity_standin/build.py DIR [KEY=JSON_VALUE ...]   # prints the build's path
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

PLAYER = Path(__file__).resolve().with_name("player.py")


def write_build(directory: str | Path, name: str = "StandIn.x86_64", **config: Any) -> Path:
    """Write ``directory/name`` (executable) and ``directory/name.json``; return the executable's path.

    ``config`` holds keys of ``player.DEFAULTS`` (task, agents, decision_period, max_step, ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / name
    cfg = exe.with_name(name + ".json")
    cfg.write_text(json.dumps(config))
    exe.write_text(
        "#!/bin/sh\n"
        "# A stand-in for a Unity ML-Agents player (tests/unity_standin/player.py).\n"
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(PLAYER))} "
        f'--standin-config {shlex.quote(str(cfg))} "$@"\n'
    )
    exe.chmod(0o755)
    return exe


if __name__ == "__main__":
    settings = dict(arg.split("=", 1) for arg in sys.argv[2:])
    print(write_build(sys.argv[1], **{k: json.loads(v) for k, v in settings.items()}))
