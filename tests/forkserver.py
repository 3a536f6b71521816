"""A ``migsync`` process in a few milliseconds: each test worker keeps one Python that has imported
migsync already, and forks it for every command a test runs to its end.

A ``migsync`` subprocess spends most of its CPU starting Python and importing (a quarter of a
second, against milliseconds for a typical command on a test's small database), and the suite
runs over a thousand of them. A fork of a process that is past that point is still a process
of its own, as the console script makes one: its own interpreter state, environment, working
directory, pipes for stdout and stderr, exit code, atexit handlers and signals; nothing it does
reaches the test's process or the next command. What it does not repeat is the start-up, so a
test about start-up (what gets imported, a new interpreter) starts the console script itself;
and what only a new interpreter reads from the environment (``PYTHON*``, the locale, the
dynamic loader) is that of the fork server, which is started with the command's. And
``MIGSYNC_TEST_FORK=0`` makes every command a new interpreter again (to compare, or to rule the
fork server out).

A fork server is single-threaded and serves one command at a time: a test that runs two at
once (from two threads) gets a plain subprocess for the second. Commands whose interpreter
environment differs (a test's own ``PYTHONPATH`` with an installed plugin) get a fork server
of their own, started with that environment.
"""

from __future__ import annotations

import array
import atexit
import importlib
import json
import locale
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Environment variables that only a new interpreter reads (at start-up, before any code runs).
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG", "MALLOC")

#: What the fork server imports once, so that no command pays for it: ``migsync.cli`` (the
#: console script's only import) and what commands import when they run. Importing them ahead
#: changes nothing a command does: migsync reads its settings when a command runs, not at import.
_PRELOAD = (
    "migsync.cli",
    "migsync.cli.inspection",
    "migsync.cli.queue",
    "migsync.cli.client",
    "migsync.core.client",
    "migsync.core.plugins",
    "migsync.core.sources",
    "migsync.client.sync",
    "migsync.output.report",
    "migsync.backends.sqlite",
    "migsync.backends.postgres",
    "migsync.transports.http",
    "migsync.transports.filedrop",
    "migsync.server.store",
    "migsync.server.engine",
    "rich.console",
    "rich.table",
)

_MAX_REQUEST = 4 << 20


def _enabled() -> bool:
    return os.environ.get("MIGSYNC_TEST_FORK", "1") != "0"


class ForkServer:
    """One Python, started with ``environ``, that forks a ``migsync`` command per request."""

    def __init__(self, script: str, environ: Mapping[str, str]) -> None:
        self.script = script
        self.environ = dict(environ)
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # This file, loaded by its path: the tests' folder must not be on the fork server's sys.path
        # (a command imports what the console script would, nothing else).
        code = (
            "import importlib.util, sys\n"
            f"sys.path[0] = {str(Path(script).parent)!r}  # as the console script has it\n"
            f"spec = importlib.util.spec_from_file_location('_migsync_forkserver', {__file__!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            f"module.serve({_PRELOAD!r}, int(sys.argv[1]))\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())],
            env=self.environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.sock = ours

    def _reply(self) -> int:
        data = self.sock.recv(64)
        if not data:
            raise AssertionError(f"the fork server ended (exit code {self.process.wait(10)})")
        return int(data)

    def run(
        self, args: Sequence[str], environ: Mapping[str, str], cwd: str, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.script, *args]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = json.dumps({"argv": argv, "env": dict(environ), "cwd": cwd}).encode()
            fds = array.array("i", [out_w, err_w])
            self.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        finally:
            os.close(out_w)
            os.close(err_w)
        pid = self._reply()
        try:
            stdout, stderr = _read_both(out_r, err_r, time.monotonic() + timeout)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self._reply()  # the killed child's status
            raise subprocess.TimeoutExpired(argv, timeout) from None
        status = self._reply()
        return subprocess.CompletedProcess(
            argv, os.waitstatus_to_exitcode(status), _text(stdout), _text(stderr)
        )

    def close(self) -> None:
        self.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _text(data: bytes) -> str:
    """``data`` as ``subprocess.run(text=True)`` decodes it: the locale's encoding, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def _read_both(out_r: int, err_r: int, deadline: float) -> tuple[bytes, bytes]:
    """Everything written to both pipes until both close (the command, and anything it started, ended)."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("migsync", 0)
            ready, _, _ = select.select(open_fds, [], [], left)
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.remove(fd)
    finally:
        os.close(out_r)
        os.close(err_r)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


#: This worker's fork servers, one for each interpreter environment (``PYTHONPATH``, mostly) that
#: its tests run commands with, the most recently used last.
_servers: dict[tuple[tuple[str, str], ...], ForkServer] = {}
_MAX_SERVERS = 3
#: Environments asked for once: a fork server costs as much CPU as a few commands, so the
#: first command of an environment is a plain subprocess, and the second starts its server.
_asked: set[tuple[tuple[str, str], ...]] = set()


def _startup_key(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith(_STARTUP_PREFIXES)))


def run_forked(
    script: str, args: Sequence[str], environ: Mapping[str, str], cwd: Path | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``script ARGS`` (the ``migsync`` console script) run to its end, as ``subprocess.run`` with
    ``capture_output=True, text=True`` runs it, but forked from a fork server that was started
    with the same interpreter environment as ``environ`` (see :data:`_STARTUP_PREFIXES`).

    A plain subprocess instead when the fork servers are off (``MIGSYNC_TEST_FORK=0``) or this
    environment's is busy with another command, or this is the first command of its environment.
    """
    if _enabled():
        key = _startup_key(environ)
        server = _servers.pop(key, None)
        if (server is None or server.process.poll() is not None) and key in _asked:
            server = ForkServer(script, environ)
        _asked.add(key)
        if server is not None:
            _servers[key] = server
            while len(_servers) > _MAX_SERVERS:
                _servers.pop(next(iter(_servers))).close()
        if server is not None and server.lock.acquire(blocking=False):
            try:
                return server.run(args, environ, str(cwd or os.getcwd()), timeout)
            finally:
                server.lock.release()
    command, env = [script, *args], dict(environ)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def shutdown() -> None:
    """Stop this worker's fork servers (their CPU time then counts as this process's children's)."""
    while _servers:
        _servers.popitem()[1].close()


# -- the fork server's side ------------------------------------------------------------------------


def serve(preload: Sequence[str], fd: int) -> None:
    """Import ``preload``, then fork a command for each request on socket ``fd`` until it closes."""
    for name in preload:
        importlib.import_module(name)
    sock = socket.socket(fileno=fd)
    fd_size = array.array("i").itemsize
    while True:
        data, ancillary, _flags, _address = sock.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(2 * fd_size))
        if not data:
            return
        fds = array.array("i")
        for _level, _type, payload in ancillary:
            fds.frombytes(payload[: len(payload) - len(payload) % fd_size])
        request: dict[str, Any] = json.loads(data)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _command(request, fds[0], fds[1])  # never returns
        for descriptor in fds:
            os.close(descriptor)
        sock.send(str(pid).encode())
        _, status = os.waitpid(pid, 0)
        sock.send(str(status).encode())


def _command(request: dict[str, Any], stdout: int, stderr: int) -> None:
    """In the forked child: become ``migsync ARGS`` and end as its interpreter would."""
    code = 1
    try:
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        # A test may have written modules or packages since the fork server began.
        importlib.invalidate_caches()
        code = _main()
        # As the interpreter ends: wait for threads that are not daemons, then run atexit.
        getattr(threading, "_shutdown", lambda: None)()
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            code = 120  # what Python exits with when it cannot flush stdout at exit
        os._exit(code)


def _main() -> int:
    """What the console script does (``sys.exit(main())``), with the exit code Python would give."""
    try:
        from migsync.cli import main

        main()
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
