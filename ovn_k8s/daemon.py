"""OVS-style daemon plumbing shared by ovn-k8s-watcher and ovn-k8s-gateway-helper.

Operators of OVS know ``--pidfile --detach --monitor --log-file -vconsole:emer
-vfile:info`` and ``ovs-appctl -t NAME exit|vlog/set|...``; the ``ovs`` library
provides both, and this module wires them to Python ``logging`` (our modules log
through it, vlog decides per destination what is written) and runs the unixctl
server on its own thread so the daemon's work never blocks ``ovs-appctl``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import ovs.daemon
import ovs.poller
import ovs.unixctl
import ovs.unixctl.server
import ovs.util
import ovs.vlog

LOG = logging.getLogger(__name__)

_LEVELS = {
    logging.CRITICAL: "emer",
    logging.ERROR: "err",
    logging.WARNING: "warn",
    logging.INFO: "info",
    logging.DEBUG: "dbg",
}


_VLOG_DESTINATIONS = frozenset(ovs.vlog.DESTINATIONS)


def add_args(parser: argparse.ArgumentParser) -> None:
    """The OVS daemon and logging flags, plus ``--unixctl PATH``."""
    ovs.daemon.add_args(parser)
    ovs.vlog.add_args(parser)
    parser.add_argument("--unixctl", metavar="SOCKET",
                        help="control socket (default $OVS_RUNDIR/NAME.PID.ctl)")


class _VlogHandler(logging.Handler):
    """Hands Python log records to vlog, which applies the -v levels per destination."""

    def __init__(self, module: str) -> None:
        super().__init__(logging.DEBUG)
        self._vlog = ovs.vlog.Vlog(module)

    def emit(self, record: logging.LogRecord) -> None:
        # vlog writes through Python loggers named after its destinations; handing
        # those records back to vlog would loop forever.
        if record.name in _VLOG_DESTINATIONS:
            return
        try:
            msg = self.format(record)
            level = max((lv for lv in _LEVELS if lv <= record.levelno), default=logging.DEBUG)
            getattr(self._vlog, _LEVELS[level])(msg)
        except Exception:
            self.handleError(record)


def _restart_also_on_sigkill() -> None:
    """Make the --monitor process restart a daemon that died of SIGKILL.

    The OVS monitor (C and Python alike) restarts only after a crash signal (SIGSEGV,
    SIGABRT, ...), but SIGKILL is how the kernel's OOM killer ends a process, and a
    node daemon that pods depend on must come back from that. Stopping it on purpose
    stays possible: ``ovs-appctl -t NAME exit`` (a clean exit is never restarted), or
    signalling the monitor. The ``ovs`` library offers no hook, so its private
    predicate is wrapped; it is looked up at each child's death.
    """
    original = ovs.daemon._should_restart
    if getattr(original, "restarts_on_sigkill", False):
        return

    def should_restart(status: int) -> bool:
        return original(status) or (os.WIFSIGNALED(status)
                                    and os.WTERMSIG(status) == signal.SIGKILL)

    should_restart.restarts_on_sigkill = True  # type: ignore[attr-defined]
    ovs.daemon._should_restart = should_restart


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the system.

    A start-up reads whole LIST bodies and NB's initial dump (tens of MB at 10k pods)
    that are garbage once parsed, but glibc keeps the freed heap: measured here, the
    watcher's RSS after a 10k-pod, 2k-service restart went from 209 to 178 MB.
    """
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass


class Daemon:
    """Daemonizes per the flags, serves unixctl, and tells the main loop when to exit."""

    def __init__(self, args: argparse.Namespace, module: str, *,
                 restart_on_sigkill: bool = False) -> None:
        """``restart_on_sigkill``: with --monitor, restart the daemon after a SIGKILL
        too (see :func:`_restart_also_on_sigkill`)."""
        if restart_on_sigkill:
            _restart_also_on_sigkill()
        # vlog modules must exist before vlog.init (inside handle_args) runs.
        handler = _VlogHandler(module)
        self._vlog = handler._vlog
        # Registered before vlog.init registers its own (the first one stays), so that
        # a level change also moves the Python loggers' threshold.
        ovs.unixctl.command_register("vlog/set", "spec", 1, sys.maxsize, self._vlog_set, None)
        ovs.vlog.handle_args(args)
        ovs.daemon.handle_args(args)
        for dest in _VLOG_DESTINATIONS:
            logging.getLogger(dest).propagate = False
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self._sync_level()
        self.exiting = threading.Event()
        self._args = args
        self._server: ovs.unixctl.server.UnixctlServer | None = None
        self._thread: threading.Thread | None = None

    def _sync_level(self) -> None:
        """Python loggers drop what no vlog destination would write: otherwise every
        debug record (ovsdbapp logs each transaction's commands) is built and formatted
        for nothing, ~9% of the watcher's CPU under a stream of service changes."""
        level = next((lv for lv in sorted(_LEVELS)
                      if getattr(self._vlog, f"{_LEVELS[lv]}_is_enabled")()), logging.CRITICAL)
        logging.getLogger().setLevel(level)

    def _vlog_set(self, conn: object, argv: list[str], _aux: object) -> None:
        for arg in argv:
            msg = ovs.vlog.Vlog.set_levels_from_string(arg)
            if msg:
                conn.reply(msg)  # type: ignore[attr-defined]
                return
        self._sync_level()
        conn.reply(None)  # type: ignore[attr-defined]

    def start(self) -> None:
        """Fork (with --detach) and open the control socket; call before any threads."""
        ovs.daemon.daemonize_start()
        error, self._server = ovs.unixctl.server.UnixctlServer.create(self._args.unixctl)
        if error:
            ovs.util.ovs_fatal(error, "could not create unixctl server")
        self.register("exit", "", 0, 0, lambda conn, argv: self._exit(conn))

    def register(
        self, name: str, usage: str, min_args: int, max_args: int,
        callback: Callable[[object, list[str]], None],
    ) -> None:
        """Add an ``ovs-appctl`` command; ``callback(conn, argv)`` must reply on conn."""
        ovs.unixctl.command_register(
            name, usage, min_args, max_args, lambda conn, argv, _aux: callback(conn, argv), None
        )

    def _exit(self, conn: object) -> None:
        LOG.info("exit requested through unixctl")
        self.exiting.set()
        conn.reply(None)  # type: ignore[attr-defined]

    def ready(self) -> None:
        """Tell a --detach parent we are up, and start serving unixctl."""
        ovs.daemon.daemonize_complete()
        self._thread = threading.Thread(target=self._serve, name="unixctl", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._server is not None
        while not self.exiting.is_set():
            self._server.run()
            poller = ovs.poller.Poller()
            self._server.wait(poller)
            poller.timer_wait(200)  # notice exiting without a message
            poller.block()
        # Let the reply to `exit` go out before the socket closes.
        self._server.run()
        self._server.close()

    def wait(self, timeout: float | None = None) -> bool:
        return self.exiting.wait(timeout)
