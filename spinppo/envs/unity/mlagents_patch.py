"""spinppo's patch of ``mlagents_envs`` internals, written against mlagents-envs 0.28.0 (ML-Agents 19).

Nothing is monkey-patched globally: ``patched_unity_environment()`` returns subclasses of mlagents_envs'
``UnityEnvironment`` and ``RpcCommunicator`` that spinppo's launch (launch.py) uses instead of the stock
ones. The protocol, the servicer and every check stay mlagents_envs' own. What is overridden, and why:

- ``RpcCommunicator.create_server``, for two reasons. The stock server listens on every interface
  (``[::]:port``, "so that the docker container can connect"), so anyone who can reach the host could
  connect to a training run as its Unity player; spinppo starts the player on the rank's own host (and
  Unity's player connects to ``localhost``), so the server listens on the address it is given:
  ``localhost`` (127.0.0.1 and ::1) unless ``--unity_listen`` says otherwise. The override makes the
  server as the stock method does (its port check, a 10-thread pool, ``grpc.so_reuseport``, the same
  servicer), with that address. And mlagents_envs hands every message between its gRPC thread and the
  main thread through a ``multiprocessing.Pipe``, which pickles it. With the pure-Python protobuf that
  mlagents_envs 0.28 needs, that is one more serialisation and one more parse of every message, most of
  the trainer's time at Walker's size (docs/unity.md, "Measurements"). Both threads are in one process,
  so once the server is made the servicer's two pipe ends (``unity_to_external.parent_conn`` and
  ``.child_conn``) are swapped for ``QueuePipeEnd``s, which hand over the message object itself. This
  happens before the player is launched, so before any message.
- ``RpcCommunicator.close``: the stock close stops the gRPC server with no grace period, which can abort
  the exchange that carries the close message before the player has it (see the override).
- ``UnityEnvironment._get_communicator``: to make the communicator above.
- ``UnityEnvironment._close``: harmless at exit when the environment never got a communicator.
- At interpreter exit the player's pending exchange is answered with a close message (status 400),
  through ``threading._register_atexit`` (what concurrent.futures itself uses; it runs before threads are
  joined): a process that exits without closing its environment (an error raised after the environment
  was made, before anything owned it) would otherwise hang for ever, as the interpreter joins the gRPC
  worker thread waiting for the next message before it runs mlagents_envs' atexit close. The player
  quits as it does on ``close()``.

The private names relied on (``unity_to_external``, ``parent_conn``, ``child_conn``, ``is_open``,
``server``, ``check_port``, ``UnityToExternalServicerImplementation``, ``_get_communicator``, ``_close``,
``_communicator``, and the Connection methods the communicator calls) are the first thing to check
when mlagents-envs is upgraded. ``mlagents_envs`` is imported only inside ``patched_unity_environment``:
importing spinppo must not import it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

# Longest wait, when closing, for the gRPC call that carries the close message to reach the player.
CLOSE_GRACE_S = 5.0


class QueuePipeEnd:
    """One end of a pair of in-process queues, standing in for a ``multiprocessing.Connection``.

    It has the methods mlagents_envs' RpcCommunicator and its servicer call on a pipe end: ``send``,
    ``poll(timeout)``, ``recv`` and ``close``. ``inbox`` is what this end receives, ``outbox`` where it
    sends; the other end is made with the two queues swapped.
    """

    def __init__(self, inbox: queue.SimpleQueue, outbox: queue.SimpleQueue) -> None:
        self._inbox, self._outbox = inbox, outbox
        # A message poll() took off the queue to see that one is there; recv() returns it first.
        self._held: list[Any] = []

    def send(self, obj: Any) -> None:
        self._outbox.put(obj)

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message is there to recv(), waiting up to ``timeout`` seconds for one."""
        if not self._held:
            try:
                self._held.append(
                    self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
                )
            except queue.Empty:
                return False
        return True

    def recv(self) -> Any:
        """The next message, waiting for it as long as it takes (callers poll() first)."""
        return self._held.pop() if self._held else self._inbox.get()

    def close(self) -> None:
        pass  # queues hold no operating-system resource


# The queues to players whose environment has not been closed, and whether the one exit hook that tells
# them to quit is registered (once per process, not once per environment).
_UNCLOSED: set[Any] = set()
_UNCLOSED_HOOK: list[bool] = []


def _close_unclosed(message: Any) -> None:
    for to_unity in list(_UNCLOSED):
        to_unity.put(message)


def patched_unity_environment(listen: str = "localhost") -> type:
    """mlagents_envs' ``UnityEnvironment`` class with the overrides the module doc lists.

    Call it as ``UnityEnvironment`` itself (same arguments); its gRPC server listens on ``listen`` (a host
    as gRPC takes it: ``localhost``, ``127.0.0.1``, ``[::1]``, ``0.0.0.0``...) and its communicator passes
    messages between its threads through queues. scripts/bench_unity.py (``--stock_communicator``) replaces
    this function with one returning the stock class, to measure the difference: launch.py looks it up at
    call time.
    """
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
    from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import (
        add_UnityToExternalProtoServicer_to_server,
    )
    from mlagents_envs.environment import UnityEnvironment
    from mlagents_envs.exception import UnityWorkerInUseException
    from mlagents_envs.rpc_communicator import RpcCommunicator, UnityToExternalServicerImplementation

    class QueueCommunicator(RpcCommunicator):
        def create_server(self) -> None:
            # The stock create_server, listening on `listen` instead of every interface ([::]).
            self.check_port(self.port)
            try:
                self.server = grpc.server(
                    thread_pool=ThreadPoolExecutor(max_workers=10), options=(("grpc.so_reuseport", 1),)
                )
                self.unity_to_external = UnityToExternalServicerImplementation()
                add_UnityToExternalProtoServicer_to_server(self.unity_to_external, self.server)
                if not self.server.add_insecure_port(f"{listen}:{self.port}"):  # older grpc: 0, no error
                    raise RuntimeError(f"cannot listen on {listen}:{self.port}")
                self.server.start()
                self.is_open = True
            except Exception:
                raise UnityWorkerInUseException(self.worker_id) from None
            to_python, to_unity = queue.SimpleQueue(), queue.SimpleQueue()
            self.unity_to_external.parent_conn = QueuePipeEnd(to_python, to_unity)
            self.unity_to_external.child_conn = QueuePipeEnd(to_unity, to_python)
            self._to_unity = to_unity
            _UNCLOSED.add(to_unity)  # see the module doc: the player gets a close if nobody closed it
            if not _UNCLOSED_HOOK:
                register = getattr(threading, "_register_atexit", None)
                if register is not None:
                    close = UnityMessageProto()
                    close.header.status = 400  # what close() sends
                    register(_close_unclosed, close)
                _UNCLOSED_HOOK.append(True)

        def close(self) -> None:
            # The stock close stops the gRPC server with no grace period, which can abort the Exchange
            # that carries the close message (status 400) before the player has it: the player then sees
            # the connection drop instead of being told to quit. The grace lets that last reply go out;
            # the server stops as soon as no call is running.
            _UNCLOSED.discard(getattr(self, "_to_unity", None))
            if self.is_open:
                message = UnityMessageProto()
                message.header.status = 400
                self.unity_to_external.parent_conn.send(message)
                self.unity_to_external.parent_conn.close()
                self.server.stop(grace=CLOSE_GRACE_S).wait()
                self.is_open = False

    class QueueUnityEnvironment(UnityEnvironment):
        @staticmethod
        def _get_communicator(worker_id: int, base_port: int, timeout_wait: int) -> RpcCommunicator:
            return QueueCommunicator(worker_id, base_port, timeout_wait)

        def _close(self, timeout: int | None = None) -> None:
            # UnityEnvironment registers _close with atexit before it has a communicator: when the port
            # is taken it has none, and the stock _close would print a traceback at exit.
            if hasattr(self, "_communicator"):
                super()._close(timeout)

    return QueueUnityEnvironment
