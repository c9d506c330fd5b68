"""Start and stop the lab (OVN central + N nodes) repeatedly; report min/p50/max seconds.

    sudo .venv/bin/python bench/lab_startstop.py [--runs 10] [--nodes 2] [--json]

Each run uses a fresh directory, brings the lab up (``Lab.up`` returns once every
chassis is in the SB, the geneve mesh exists and the underlay is warm), then down
(``Lab.down``: every process, netns, link and file gone), and checks nothing is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import netns

from ovn_k8s.sandbox.lab import Lab

TARGET_UP_SECONDS = 3.0  # central + 2 nodes, issue 2


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: str) -> str:
        try:
            out = subprocess.run([cmd, "--version"], capture_output=True, text=True,
                                 check=False, timeout=5).stdout
        except OSError:
            return "?"
        return out.splitlines()[0] if out else "?"

    return {
        "cpus": str(os.cpu_count()),
        "cpu model": model or platform.processor() or "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ovs": version("ovs-vswitchd"),
        "ovn": version("ovn-controller"),
    }


def leftovers(lab_dir: Path, prefix: str) -> list[str]:
    found = [ns for ns in netns.listnetns() if ns.startswith(prefix)]
    marker = str(lab_dir) + "/"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmd.replace("\0", " "):
                found.append(f"pid {entry}")
    if lab_dir.exists():
        found.append(str(lab_dir))
    return found


def stats(values: list[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "p50": statistics.median(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="ovn-k8s-bench-"))
    ups: list[float] = []
    downs: list[float] = []
    try:
        for i in range(args.runs):
            d = base / f"run{i}"
            lab = Lab(d, nodes=args.nodes)
            t0 = time.perf_counter()
            lab.up()
            ups.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            lab.down()
            downs.append(time.perf_counter() - t0)
            left = leftovers(d, lab.prefix)
            if left:
                print(f"run {i}: left behind {left}", file=sys.stderr)
                return 1
    finally:
        for d in base.glob("run*"):
            Lab.load(d).down()
        base.rmdir()

    result = {
        "machine": machine(),
        "runs": args.runs,
        "nodes": args.nodes,
        "up": stats(ups),
        "down": stats(downs),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        print(f"lab start/stop: central + {args.nodes} nodes, {args.runs} runs")
        print(f"machine: {m['cpus']} cpus, {m['cpu model']}, kernel {m['kernel']}, "
              f"python {m['python']}")
        print(f"         {m['ovs']}; {m['ovn']}")
        print()
        print(f"| {'what':<10} | {'min s':>6} | {'p50 s':>6} | {'max s':>6} |")
        print(f"|{'-' * 12}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
        for what in ("up", "down"):
            s = result[what]
            print(f"| {what:<10} | {s['min']:6.2f} | {s['p50']:6.2f} | {s['max']:6.2f} |")
    if args.nodes == 2 and max(ups) > TARGET_UP_SECONDS:
        print(f"slowest up {max(ups):.2f}s exceeds the {TARGET_UP_SECONDS:g}s target",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
