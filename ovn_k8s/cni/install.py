"""Put the CNI network config and the plugin where the container runtime looks."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

PLUGIN = "ovn-k8s-cni-overlay"
CONFLIST = "10-ovn-k8s.conflist"
NETWORK_NAME = "ovn-kubernetes"


def conflist(mtu: int) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{"type": PLUGIN, "mtu": mtu}],
    }


def _write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    """Atomically replace ``path`` unless it already holds ``data``.

    The runtime may read the directory at any moment: it must see the old file
    or the new one, never half of one.
    """
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def plugin_script(python: str | None = None) -> bytes:
    """The plugin the runtime runs per call: this environment's Python started with
    ``-I -S`` and the package's directory put on the path by hand.

    pip's console script starts the full site (site-packages, .pth files, an
    editable install's finder): ~35 ms more per pod here, for a process that with a
    node daemon only forwards the call (ovn_k8s.cmd.cni loads the site itself when it
    has to do the work)."""
    import ovn_k8s  # noqa: PLC0415

    top = str(Path(ovn_k8s.__file__).resolve().parent.parent)
    return (f"#!{python or sys.executable} -IS\n"
            f'"""{PLUGIN}: the CNI plugin of ovn-k8s (written by ovn_k8s.cni.install)."""\n'
            "import sys\n"
            f"sys.path.insert(0, {top!r})\n"
            "from ovn_k8s.cmd.cni import main\n"
            "main()\n").encode()


def install(conf_dir: Path, bin_dir: Path, mtu: int) -> list[Path]:
    """Write the conflist and copy the plugin in; returns the files that changed."""
    changed = []
    conf = conf_dir / CONFLIST
    if _write_if_changed(conf, (json.dumps(conflist(mtu), indent=2) + "\n").encode(), 0o644):
        changed.append(conf)
    plugin = bin_dir / PLUGIN
    if _write_if_changed(plugin, plugin_script(), 0o755):
        changed.append(plugin)
    return changed
