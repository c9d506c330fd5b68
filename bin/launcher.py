#!/usr/bin/env python3
"""Run an ovn-k8s command from a checkout, without installing it.

Every file in bin/ is a symlink to this one; the name it was called by picks the
entry point, exactly as the installed console scripts do (see setup.cfg).
"""

import os
import sys

TOP = os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir)
VENV_PYTHON = os.path.join(TOP, ".venv", "bin", "python")

# The CNI plugin runs once per pod: start it as ovn_k8s.cni.install's script does,
# without the site (it loads the site itself when it has work to do).
NO_SITE = {"ovn-k8s-cni-overlay"}

# The dependencies live in the checkout's venv (tools/bootstrap builds it); a bare
# `python3` would fail on the first import, so hop into the venv when there is one.
if os.path.exists(VENV_PYTHON) and not sys.flags.no_site and os.path.realpath(
        sys.prefix) != os.path.realpath(os.path.join(TOP, ".venv")):
    flags = ["-IS"] if os.path.basename(sys.argv[0]) in NO_SITE else []
    os.execv(VENV_PYTHON, [VENV_PYTHON, *flags, *sys.argv])

sys.path.insert(0, TOP)

COMMANDS = {
    "ovn-k8s-overlay": "overlay",
    "ovn-k8s-watcher": "watcher",
    "ovn-k8s-cni-overlay": "cni",
    "ovn-k8s-util": "util",
    "ovn-k8s-gateway-helper": "gateway_helper",
    "ovn-k8s-sandbox": "sandbox",
}

if __name__ == "__main__":
    name = os.path.basename(sys.argv[0])
    if name not in COMMANDS:
        sys.exit(f"{name}: call one of {', '.join(sorted(COMMANDS))} (symlinks to this file)")
    module = __import__(f"ovn_k8s.cmd.{COMMANDS[name]}", fromlist=["main"])
    module.main()
