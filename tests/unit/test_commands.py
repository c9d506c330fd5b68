"""Every command named in DESIGN.md exists three ways: console script, bin/ link, module."""

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "ovn-k8s-overlay",
    "ovn-k8s-watcher",
    "ovn-k8s-cni-overlay",
    "ovn-k8s-util",
    "ovn-k8s-gateway-helper",
    "ovn-k8s-sandbox",
}


def console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


def test_console_scripts_match_design():
    assert set(console_scripts()) == COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_entry_point_importable(name):
    module, func = console_scripts()[name].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bin_link_runs_same_entry_point(name):
    link = ROOT / "bin" / name
    assert link.is_symlink() and os.access(link, os.X_OK)
    module = console_scripts()[name].split(":")[0]
    # `--help` must work through the launcher exactly as through the console script.
    proc = subprocess.run(
        [sys.executable, str(link), "--help"], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower(), module


def test_bin_unknown_name_is_refused(tmp_path):
    odd = tmp_path / "ovn-k8s-nope"
    odd.symlink_to(ROOT / "bin" / "launcher.py")
    proc = subprocess.run([sys.executable, str(odd)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "call one of" in proc.stderr
