"""A small "cluster" of hosts on one machine: one network namespace per host, joined by a bridge.

Each host is a network namespace with loopback and one veth port on a private /24 that exists only inside
these namespaces; the ports meet on a bridge that lives in a namespace of its own (the "switch"), so no
address or route is added to the machine's own namespace and nothing is sent anywhere else. IPv6 is off in
every namespace, so the links carry no router solicitations either.

``netns_rsh`` (beside this file) is the remote shell: ``netns_rsh ADDR COMMAND...`` runs COMMAND in the
namespace that owns ADDR, with its own UTS hostname and its own mount namespace (per-host bind mounts give
each host a private directory at a shared path, as on machines without a shared filesystem). Hydra calls it
with ``-launcher rsh -launcher-exec netns_rsh``; mpiexec itself runs on the first host through it, so that
the proxies on the other hosts can reach it at the first host's address.

Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2's ``ip`` and util-linux's ``unshare``.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RSH = str(HERE / "netns_rsh")
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
SUBNET = "10.213.7"  # a /24 that only ever exists inside the namespaces made here
PREFIX = "spmh"  # namespace names: spmh<pid>x<token>-<role>, so stale ones can be told apart and removed


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, no iproute2, no permission): a reason to skip."""


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used on this machine, or None if they can (without making one)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "unshare", "mount", "taskset"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (apt-get install iproute2 util-linux mount)"
    return None


def _sh(args: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    out = _sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_netns_processes(ns: str) -> None:
    """Kill what still runs in namespace ``ns`` (only processes this module started live there)."""
    for _ in range(20):
        pids = [int(p) for p in _sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete_netns(ns: str) -> None:
    _kill_netns_processes(ns)
    # Deleting a namespace deletes the veth ends in it; the bridge goes with the switch namespace.
    _sh(["ip", "netns", "delete", ns], check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by an earlier run of this module whose process is gone (e.g. killed -9).

    A namespace that some process still runs in is left alone, whoever made it.
    """
    removed = []
    for ns in _netns_names():
        m = re.fullmatch(rf"{PREFIX}(\d+)x[0-9a-f]+-\w+", ns)
        in_use = _sh(["ip", "netns", "pids", ns], check=False).stdout.split() if m else []
        if m and not _pid_alive(int(m.group(1))) and not in_use:
            _delete_netns(ns)
            removed.append(ns)
    return removed


@dataclass
class Host:
    name: str  # UTS hostname inside the namespace: h1, h2, ...
    addr: str  # its address on the private /24
    netns: str  # network namespace name
    binds: list[tuple[str, str]] = field(default_factory=list)  # (source, mount point) bind mounts
    cpus: list[int] | None = None  # the cores its processes may run on (None: all of this machine's)


class NetnsCluster:
    """``n`` hosts h1..hn with addresses SUBNET.1..n, each in its own network namespace.

    Use as a context manager, or call ``up()`` and (always) ``down()``. ``binds`` maps a host name to
    (source, mount point) pairs bind-mounted for every process started on that host. With ``split_cpus``
    (the default) the machine's cores are shared out among the hosts, so that each host has cores of its
    own as real machines do (spinppo sizes its torch thread pools by the cores it may use per host); with
    fewer cores than hosts every host gets them all.
    """

    def __init__(
        self,
        n: int,
        workdir: str | os.PathLike,
        binds: dict[str, list[tuple[str, str]]] | None = None,
        split_cpus: bool = True,
    ):
        if not 1 <= n <= 8:
            raise ValueError("between 1 and 8 hosts")
        token = secrets.token_hex(3)
        self.tag = f"{PREFIX}{os.getpid()}x{token}"
        self.switch = f"{self.tag}-sw"
        self.hosts = [
            Host(
                name=f"h{i}",
                addr=f"{SUBNET}.{i}",
                netns=f"{self.tag}-h{i}",
                binds=list((binds or {}).get(f"h{i}", [])),
            )
            for i in range(1, n + 1)
        ]
        cores = sorted(os.sched_getaffinity(0))
        if split_cpus and len(cores) >= n:
            for i, h in enumerate(self.hosts):
                h.cpus = cores[i * len(cores) // n : (i + 1) * len(cores) // n]
        self.workdir = Path(workdir)
        self.map_file = self.workdir / f"{self.tag}.hosts"
        self._made: list[str] = []

    # ------------------------------------------------------------------------------------------ set-up

    def up(self) -> NetnsCluster:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        remove_stale_namespaces()
        try:
            try:
                self._build()
            except RuntimeError as e:  # an `ip` command refused: no permission, no veth or bridge support
                raise NetnsUnavailable(f"cannot build the namespaces' network: {e}") from None
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.map_file.write_text(self._map_text())
            self._wait_reachable()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        self._add_netns(self.switch)
        self._ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self._ns(self.switch, "ip", "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts, start=1):
            self._add_netns(h.netns)
            # Both veth ends are made directly in their namespaces: no name ever appears in the root one.
            _sh(
                ["ip", "link", "add", "eth0", "netns", h.netns, "type", "veth", "peer", "name", f"p{i}"]
                + ["netns", self.switch]
            )
            self._ns(self.switch, "ip", "link", "set", f"p{i}", "master", "br0", "up")
            self._ns(h.netns, "ip", "addr", "add", f"{h.addr}/24", "dev", "eth0")
            self._ns(h.netns, "ip", "link", "set", "lo", "up")
            self._ns(h.netns, "ip", "link", "set", "eth0", "up")

    def _map_text(self) -> str:
        lines = []
        for h in self.hosts:
            if any(c.isspace() or c == "=" for src, dst in h.binds for c in src + dst):
                raise ValueError("bind paths may not hold spaces or '='")
            binds = " ".join(f"{src}={dst}" for src, dst in h.binds)
            cpus = ",".join(map(str, h.cpus)) if h.cpus else "-"
            lines.append(f"{h.addr} {h.netns} {h.name} {cpus} {binds}".rstrip())
        return "\n".join(lines) + "\n"

    def _add_netns(self, ns: str) -> None:
        _sh(["ip", "netns", "add", ns])
        self._made.append(ns)
        # No IPv6 (and so no link-local chatter) on any link made later in this namespace.
        for key in ("default", "all"):
            self._ns(ns, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{key}/disable_ipv6", check=False)

    def _ns(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _sh(["ip", "netns", "exec", ns, *args], check=check)

    def _wait_reachable(self, timeout: float = 10.0) -> None:
        """Wait until the first host reaches every other host over TCP (bridge ports forwarding)."""
        probe = (
            "import socket,sys,time\n"
            "end=time.time()+float(sys.argv[1])\n"
            "for a in sys.argv[2:]:\n"
            "  while True:\n"
            "    s=socket.socket(); s.settimeout(0.5)\n"
            "    try: s.connect((a,9)); break\n"  # the discard port is closed: a RST means reachable
            "    except ConnectionRefusedError: break\n"
            "    except OSError:\n"
            "      if time.time()>end: sys.exit('unreachable '+a)\n"
            "      time.sleep(0.05)\n"
            "    finally: s.close()\n"
        )
        others = [h.addr for h in self.hosts[1:]]
        if others:
            self._ns(self.hosts[0].netns, sys.executable, "-c", probe, str(timeout), *others)

    def down(self) -> None:
        """Kill every process left in the namespaces and delete them (and so the veths and the bridge)."""
        for ns in reversed(self._made):
            _delete_netns(ns)
        self._made.clear()
        try:
            self.map_file.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> NetnsCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------------------------------- use

    def env(self, **extra: str) -> dict[str, str]:
        """Environment entries that ``netns_rsh`` and MPI over the veths need (merge into a child env)."""
        env = {
            "SPINPPO_NETNS_MAP": str(self.map_file),
            # UCX (the default netmod of the mpich wheel) sees one boot id in every namespace and would move
            # data between "hosts" through shared memory or CMA; TCP only, so the bytes cross the veths.
            "UCX_TLS": "tcp,self",
            "UCX_NET_DEVICES": "eth0",
            # The same for the OFI netmod, when chosen with MPIR_CVAR_CH4_NETMOD=ofi.
            "FI_PROVIDER": "tcp",
            "FI_TCP_IFACE": "eth0",
        }
        env.update(extra)
        return env

    def mpiexec(self, hosts: list[str], np_: int, args: list[str], mpiexec_args: list[str] = ()) -> list[str]:
        """The command line that runs ``mpiexec ... -np np_ ARGS`` from host ``hosts[0]``.

        ``hosts`` are host names (h1, h2, ...), optionally with ``:slots``; ranks go to them in order,
        ``slots`` at a time (hydra's rule).
        """
        by_name = {h.name: h for h in self.hosts}
        spec = []
        for entry in hosts:
            name, _, slots = entry.partition(":")
            spec.append(by_name[name].addr + (f":{slots}" if slots else ""))
        first = by_name[hosts[0].partition(":")[0]]
        cmd = [MPIEXEC, "-hosts", ",".join(spec), "-launcher", "rsh", "-launcher-exec", RSH]
        cmd += list(mpiexec_args) + ["-np", str(np_), *args]
        return self.on_host(first.name, cmd)

    def on_host(self, name: str, cmd: list[str]) -> list[str]:
        """The command line that runs ``cmd`` on host ``name`` (its namespace, hostname and mounts)."""
        addr = next(h.addr for h in self.hosts if h.name == name)
        return [RSH, addr, shlex.join(cmd)]

    def link_bytes(self, name: str) -> int:
        """Bytes sent plus received so far on host ``name``'s veth."""
        ns = next(h.netns for h in self.hosts if h.name == name)
        out = self._ns(
            ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes", "/sys/class/net/eth0/statistics/rx_bytes"
        )
        return sum(int(x) for x in out.stdout.split())
