"""Running the set-up commands on lab nodes as an operator does, and NB snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
OUR_TABLES = ("Logical_Router", "Logical_Router_Port", "Logical_Switch", "Logical_Switch_Port",
              "Load_Balancer", "Load_Balancer_Group", "Logical_Router_Static_Route", "NAT")


def run(lab: Any, node: str, command: str, *args: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``command args`` (an installed console script) on ``node``, in its netns."""
    proc = lab.node(node).exec([str(BIN / command), *args], timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def overlay(lab: Any, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(lab, node, "ovn-k8s-overlay", *args, "--nb", lab.nb_remote, "--timeout", "10",
               check=check)


def snapshot(nb: Any) -> dict[tuple[str, str], dict[str, str]]:
    """Every column of every row of the tables we write, keyed by uuid."""
    nb.execute(nb.api.ls_list())  # a round trip, so our replica has caught up
    snap = {}
    for table in OUR_TABLES:
        for row in nb.rows(table):
            cols = {c: str(getattr(row, c)) for c in nb.api.tables[table].columns}
            snap[(table, str(row.uuid))] = cols
    return snap
