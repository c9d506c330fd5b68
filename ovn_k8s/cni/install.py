"""Put the CNI network config and the plugin where the container runtime looks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN = "ovn-k8s-cni-overlay"
CONFLIST = "10-ovn-k8s.conflist"
NETWORK_NAME = "ovn-kubernetes"
FRONT_SOURCE = Path(__file__).with_name("front.c")
# auto: the compiled front when a C compiler builds it, else the Python script.
FRONTS = ("auto", "c", "python")

LOG = logging.getLogger(__name__)


class InstallError(Exception):
    pass


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


def _boot(argv0_follows: bool = False) -> str:
    """Python source that runs the plugin from this package, with no site loaded.
    With ``argv0_follows`` it is run by ``-c`` and the caller's argv[0] comes next:
    put it in sys.argv[0], where OVS daemon code takes the program's name from."""
    import ovn_k8s  # noqa: PLC0415

    top = str(Path(ovn_k8s.__file__).resolve().parent.parent)
    return ("import sys\n" + ("del sys.argv[0]\n" if argv0_follows else "")
            + f"sys.path.insert(0, {top!r})\nfrom ovn_k8s.cmd.cni import main\nmain()\n")


def plugin_script(python: str | None = None) -> bytes:
    """The plugin as a script: this environment's Python started with ``-I -S`` and
    the package's directory put on the path by hand.

    pip's console script starts the full site (site-packages, .pth files, an
    editable install's finder): ~35 ms more per pod here, for a process that with a
    node daemon only forwards the call (ovn_k8s.cmd.cni loads the site itself when it
    has to do the work)."""
    return (f"#!{python or sys.executable} -IS\n"
            f'"""{PLUGIN}: the CNI plugin of ovn-k8s (written by ovn_k8s.cni.install)."""\n'
            + _boot()).encode()


def _c_string(text: str) -> str:
    """A C string literal of ``text``'s bytes: printable ASCII as itself, the rest octal."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7f and char not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def compiled_front(cc: str = "cc", python: str | None = None) -> bytes:
    """The plugin as the C front (front.c), which execs this environment's Python
    (``-I -S``) for everything but forwarding a call to the node daemon.

    Its constants are the Python front's (ovn_k8s.cmd.cni), so the two cannot drift.
    Raises InstallError with the compiler's message when it does not build."""
    from ovn_k8s.cmd import cni  # noqa: PLC0415
    from ovn_k8s.cni import spec  # noqa: PLC0415

    defines = {
        "FRONT_PYTHON": _c_string(python or sys.executable),
        "FRONT_BOOT": _c_string(_boot(argv0_follows=True)),
        "FRONT_DEFAULT_RUNDIR": _c_string(cni.DEFAULT_RUNDIR),
        "FRONT_SOCKET_NAME": _c_string(cni.SOCKET_NAME),
        "FRONT_DAEMON_FAILED": _c_string(cni.DAEMON_FAILED),
        "FRONT_CHECK_TIMEOUT": repr(float(cni.CHECK_TIMEOUT)),
        "FRONT_DAEMON_MARGIN": repr(float(cni.DAEMON_MARGIN)),
        "FRONT_VERSION_INFO": _c_string(json.dumps(spec.version_info()) + "\n"),
        "FRONT_SUPPORTED_VERSIONS": ", ".join(map(_c_string, spec.SUPPORTED_VERSIONS)),
        "FRONT_CURRENT_VERSION": _c_string(spec.CURRENT_VERSION),
    }
    source = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    source += f'#line 1 "{FRONT_SOURCE.name}"\n' + FRONT_SOURCE.read_text()
    with tempfile.TemporaryDirectory(prefix="ovn-k8s-front-") as tmp:
        out = Path(tmp) / PLUGIN
        try:
            proc = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-x", "c", "-o", str(out), "-"],
                                  input=source.encode(), capture_output=True, timeout=120,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InstallError(f"cannot run the C compiler {cc!r}: {e}") from e
        said = proc.stderr.decode(errors="replace").strip()
        if proc.returncode != 0 or not out.exists():
            raise InstallError(f"{cc} could not build {FRONT_SOURCE.name}: {said}")
        if said:
            LOG.warning("%s warned building %s: %s", cc, FRONT_SOURCE.name, said)
        return out.read_bytes()


def plugin_binary(front: str = "auto") -> tuple[bytes, str]:
    """The plugin's bytes and which front they are (``c`` or ``python``)."""
    if front not in FRONTS:
        raise InstallError(f"unknown CNI front {front!r}: one of {', '.join(FRONTS)}")
    if front == "python":
        return plugin_script(), "python"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if front == "c":
            raise InstallError("no C compiler (cc) to build the CNI front; install gcc "
                               "and libc6-dev, or use the Python front")
        LOG.warning("no C compiler: installing the Python CNI front (11-20 ms slower per call)")
        return plugin_script(), "python"
    try:
        return compiled_front(cc), "c"
    except InstallError as e:
        if front == "c":
            raise
        LOG.warning("%s; installing the Python CNI front instead", e)
        return plugin_script(), "python"


def install(conf_dir: Path, bin_dir: Path, mtu: int, front: str = "auto") -> list[Path]:
    """Write the conflist and the plugin (``front``: see FRONTS); returns the files
    that changed. The compiled front is built before anything is written."""
    data, kind = plugin_binary(front)
    changed = []
    conf = conf_dir / CONFLIST
    if _write_if_changed(conf, (json.dumps(conflist(mtu), indent=2) + "\n").encode(), 0o644):
        changed.append(conf)
    plugin = bin_dir / PLUGIN
    if _write_if_changed(plugin, data, 0o755):
        LOG.info("installed the %s CNI front as %s", kind, plugin)
        changed.append(plugin)
    return changed
