"""CNI ADD/DEL latency through the installed plugin, next to the in-process floor.

    sudo .venv/bin/python bench/cni.py [--pods 30] [--json]

A lab of its own (central + 2 nodes; pods on node1), the Kubernetes API emulator with
every pod already annotated, one LSP per pod. The figures per operation:

* ``binary``: the installed plugin (what ``ovn-k8s-overlay minion-init`` puts in the
  CNI bin directory: the compiled front where a C compiler is, see ovn_k8s.cni.install)
  run as kubelet on the node runs it: a new process per call, started by a thread that
  has joined the node's netns (kubelet lives in the host's; ``ip netns exec`` would
  add ~3 ms of mount-namespace set-up per call that no node pays), wall time per call,
  with no node daemon: every call does the work itself (the fallback: the front execs
  the Python plugin);
* ``daemon binary``: the same, with ``ovn-k8s-cni-overlay daemon`` running on the
  node: the plugin process only forwards the call over the daemon's socket;
* ``daemon python front``: the baseline, the Python front (this venv's Python with
  ``-I -S``) in the same place, its calls alternating with the compiled front's;
* ``daemon socket``: the front's forwarding function called in this process (no new
  process per call): the daemon's own service time, without any process start;
* ``Python front start``: the Python front with ``--help`` (interpreter start and the
  front's imports, nothing else), started the same way;
* ``launch``: ``/bin/true`` started the same way: what starting any process costs;
* ``in-process``: the same ADD/DEL code called in a loop in one warm process on the
  node (imports done, OVSDB connection open; it still reads each pod from the API):
  the floor the README compares with.

Then where the daemon's time goes, per step (medians of what it logs per call), and
the CPU each call costs: the plugin processes (this process's children) and the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = re.compile(r"\b(ADD|DEL) .*\(ms: ([^;)]*)(?:; in the netns, alongside: ([^)]*))?\)")
TARGETS = {"ADD p50": 0.050, "ADD p99": 0.150, "DEL p50": 0.025}  # DESIGN.md


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(values), "p50": statistics.median(ordered), "p99": p99,
            "max": ordered[-1]}


def cni_env(call: dict, command: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command, "CNI_CONTAINERID": call["cid"], "CNI_NETNS": call["netns"],
        "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": f"K8S_POD_NAMESPACE={call['namespace']};K8S_POD_NAME={call['pod']};"
                    f"K8S_POD_UID={call['uid']}",
    }


def on_node(node: Any, argv: list[str], env: dict[str, str] | None = None,
            input: str | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``argv`` started as a process on the node (as kubelet there starts the plugin):
    (wall seconds, the finished process)."""
    from ovn_k8s.cni import links  # noqa: PLC0415

    def run() -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.perf_counter()
        proc = subprocess.run(argv, env=dict(os.environ, **node.env, **(env or {})),
                              input=input, capture_output=True, text=True, timeout=60,
                              check=False)
        return time.perf_counter() - start, proc

    # The child is forked by a thread inside the node's netns, so it starts there.
    return links.in_netns(f"/var/run/netns/{node.netns}", run)


def run_binary(node: Any, plugin: str, call: dict, command: str, config: dict) -> float:
    """One call of the installed plugin as kubelet makes it; its wall time in seconds."""
    elapsed, proc = on_node(node, [plugin], cni_env(call, command), json.dumps(config))
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed: {proc.stdout} {proc.stderr}")
    return elapsed


def in_process(spec_path: str) -> int:
    """Child mode, run on the node: ADD then DEL every pod, timing each call."""
    from ovn_k8s.cni import plugin, spec  # noqa: PLC0415

    job = json.loads(Path(spec_path).read_text())
    conf = json.dumps(job["config"]).encode()
    out: dict[str, list[float]] = {"ADD": [], "DEL": []}
    for command in ("ADD", "DEL"):
        for call in job["calls"]:
            start = time.perf_counter()
            req = spec.parse_request(cni_env(call, command), conf)
            if command == "ADD":
                plugin.add(req)
            else:
                plugin.delete(req)
            out[command].append(time.perf_counter() - start)
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # the OVSDB connection thread need not be joined


def _cpu_of(pid: int) -> float:
    """Seconds of CPU process ``pid`` (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def daemon_steps(log: Path) -> dict[str, dict[str, float]]:
    """Median ms per step the daemon logged for each command."""
    steps: dict[str, dict[str, list[float]]] = {}
    for line in log.read_text().splitlines():
        m = STEPS.search(line)
        if not m:
            continue
        for part in filter(None, (m.group(2), m.group(3))):
            for item in part.split(", "):
                name, _, ms = item.rpartition(" ")
                steps.setdefault(m.group(1), {}).setdefault(name, []).append(float(ms))
    return {cmd: {k: statistics.median(v) for k, v in d.items()} for cmd, d in steps.items()}


def with_daemon(node: Any, plugins: dict[str, str], kubeconfig: str, work: Path,
                calls: dict[str, list[dict]], direct: list[dict],
                config: dict) -> tuple[dict[str, dict[str, float]], dict]:
    """ADD then DEL every call through each plugin binary while the node daemon serves
    them (the fronts alternate call by call, so the VM's drift hits both alike), then
    the ``direct`` calls straight over the socket from this process."""
    from ovn_k8s.cmd import cni as front  # noqa: PLC0415

    log = work / "daemon.log"
    started = node.exec([next(iter(plugins.values())), "daemon", "--node-name", "node1",
                         "--kubeconfig", kubeconfig, "--pidfile", "--detach", "--no-chdir",
                         f"--log-file={log}", "-vconsole:off", "-vfile:info"], timeout=60)
    if started.returncode != 0:
        raise RuntimeError(f"the CNI daemon did not start: {started.stderr}")
    pid = int((Path(node.env["OVS_RUNDIR"]) / "ovn-k8s-cni-overlay.pid").read_text().split()[0])
    timings: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    try:
        for command in ("ADD", "DEL"):
            daemon_cpu = _cpu_of(pid)
            for each in zip(*(calls[name] for name in plugins), strict=True):
                for (name, plugin), call in zip(plugins.items(), each, strict=True):
                    children_cpu = _children_cpu()
                    timings.setdefault(f"{name} {command}", []).append(
                        run_binary(node, plugin, call, command, config))
                    key = f"{command} plugin process, {name}"
                    cpu[key] = cpu.get(key, 0.0) + _children_cpu() - children_cpu
            for name in plugins:
                cpu[f"{command} plugin process, {name}"] /= len(calls[name])
            cpu[f"{command} daemon"] = (_cpu_of(pid) - daemon_cpu) / sum(map(len, calls.values()))
        conf = json.dumps(config).encode()
        for command in ("ADD", "DEL"):
            for call in direct:
                env = {**cni_env(call, command), **node.env}
                start = time.perf_counter()
                answer = front.via_daemon(env, conf)
                timings.setdefault(f"socket {command}", []).append(time.perf_counter() - start)
                if answer is None or answer[0] != 0:
                    raise RuntimeError(f"{command} over the socket failed: {answer}")
        status = json.loads(node.exec(["ovs-appctl", "-t", "ovn-k8s-cni-overlay", "status"],
                                      timeout=15).stdout)
        served = status["requests"].get("ADD-ok", 0)
        expected = sum(map(len, calls.values())) + len(direct)
        if served != expected:
            raise RuntimeError(f"the daemon served {served} ADDs of {expected}")
    finally:
        node.exec(["ovs-appctl", "-t", "ovn-k8s-cni-overlay", "exit"], timeout=15)
    results = {f"daemon {k}": stats(v) for k, v in timings.items()}
    return results, {"steps": daemon_steps(log), "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-process", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        return in_process(args.in_process)
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 1

    from kubernetes import client  # noqa: PLC0415
    from pyroute2 import netns  # noqa: PLC0415

    from ovn_k8s import ovsdb  # noqa: PLC0415
    from ovn_k8s.cni import install as cni_install  # noqa: PLC0415
    from ovn_k8s.sandbox.apiserver import ApiServer  # noqa: PLC0415
    from ovn_k8s.sandbox.lab import Lab  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="bench-cni-"))
    lab = Lab(work / "lab", nodes=2)
    srv = None
    made_ns: list[str] = []
    try:
        lab.up()
        node = lab.node("node1")
        srv = ApiServer(host=lab.connect_host())
        srv.start()
        v1 = client.CoreV1Api(srv.api_client())
        kubeconfig = srv.write_kubeconfig(work / "kubeconfig")
        v1.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": "bench"}})
        nb = ovsdb.connect_nb(lab.nb_remote, timeout=10.0)
        config = {"cniVersion": "1.0.0", "name": "ovn-kubernetes",
                  "type": "ovn-k8s-cni-overlay", "mtu": 1400, "kubeconfig": kubeconfig,
                  "logFile": str(work / "cni.log")}

        def make_calls(round_: int) -> list[dict]:
            calls = []
            with nb.transaction() as txn:
                txn.add(nb.api.ls_add(f"cni-bench-{round_}", may_exist=True))
                for i in range(args.pods):
                    ip = f"10.{200 + round_}.{i // 250}.{i % 250 + 2}"
                    mac = "0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
                    name = f"p{round_}-{i}"
                    uid = v1.create_namespaced_pod("bench", {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "annotations": {"ovn": json.dumps({
                            "ip_address": f"{ip}/16", "mac_address": mac,
                            "gateway_ip": f"10.{200 + round_}.0.1"})}},
                        "spec": {"nodeName": "node1",
                                 "containers": [{"name": "c", "image": "pause"}]},
                    }).metadata.uid
                    txn.add(nb.api.lsp_add(f"cni-bench-{round_}", f"bench_{name}",
                                           addresses=[f"{mac} {ip}"]))
                    ns = f"{lab.prefix}-cni-{secrets.token_hex(4)}"  # swept by lab.down
                    netns.create(ns)
                    made_ns.append(ns)
                    calls.append({"cid": secrets.token_hex(32), "netns": f"/var/run/netns/{ns}",
                                  "namespace": "bench", "pod": name, "uid": uid})
            return calls

        results: dict[str, dict[str, float]] = {}
        # The plugin as minion-init installs it for the runtime (the compiled front
        # where a C compiler is), and the Python front as the baseline.
        cni_install.install(work / "net.d", work / "cni-bin", 1400)
        cni_install.install(work / "py.d", work / "py-bin", 1400, front="python")
        plugin = str(work / "cni-bin" / cni_install.PLUGIN)
        python_front = str(work / "py-bin" / cni_install.PLUGIN)
        # Through the binary, one process per call.
        timings: dict[str, list[float]] = {"ADD": [], "DEL": [], "front": [], "launch": []}
        calls = make_calls(0)
        for command in ("ADD", "DEL"):
            for call in calls:
                timings[command].append(run_binary(node, plugin, call, command, config))
        for argv, key in (([python_front, "--help"], "front"), (["/bin/true"], "launch")):
            for _ in calls:
                timings[key].append(on_node(node, argv)[0])
        names = {"front": "Python front start (--help)", "launch": "launch (/bin/true)"}
        for k, v in timings.items():
            results[names.get(k, f"binary {k}")] = stats(v)

        # Through the binaries again, with the node daemon up (detached, as systemd runs it).
        with_results, breakdown = with_daemon(
            node, {"binary": plugin, "python front": python_front}, kubeconfig, work,
            {"binary": make_calls(2), "python front": make_calls(4)}, make_calls(3), config)
        results.update(with_results)

        # In one warm process on the node: the first call pays the imports, drop it.
        calls = make_calls(1)
        job = work / "job.json"
        job.write_text(json.dumps({"config": config, "calls": calls}))
        proc = node.exec([sys.executable, __file__, "--in-process", str(job)], timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"in-process run failed: {proc.stderr}")
        inproc = json.loads(proc.stdout.strip().splitlines()[-1])
        for k in ("ADD", "DEL"):
            results[f"in-process {k}"] = stats(inproc[k][1:])
        nb.close()
    finally:
        if srv is not None:
            srv.stop()
        for ns in made_ns:
            if ns in netns.listnetns():
                netns.remove(ns)
        lab.down()
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps({"latency": results, **breakdown}, indent=2))
        return 0
    print(f"CNI through the plugin binary vs in-process, {args.pods} pods on one node")
    print()
    print(f"| {'what':<28} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for what, s in results.items():
        print(f"| {what:<28} | {s['p50'] * 1000:7.1f} | {s['p99'] * 1000:7.1f} | "
              f"{s['max'] * 1000:7.1f} |")
    print()
    for command, steps in breakdown["steps"].items():
        print(f"daemon {command} steps, median ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    for what, seconds in breakdown["cpu"].items():
        command, _, whose = what.partition(" ")
        print(f"CPU per {command}, {whose}: {seconds * 1000:.1f} ms")
    print()
    for row in ("binary", "daemon binary", "daemon python front"):
        for target, limit in TARGETS.items():
            op, q = target.split()
            got = results[f"{row} {op}"][q]
            verdict = "meets" if got <= limit else "misses"
            print(f"{row} {target}: {got * 1000:.0f} ms {verdict} the {limit * 1000:.0f} ms "
                  "target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
