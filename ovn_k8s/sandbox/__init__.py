"""The lab, the Kubernetes API emulator and the stand-ins that make up the sandbox."""

from __future__ import annotations

import signal
import threading


def termination() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the stand-ins run until the sandbox stops them."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    return done
