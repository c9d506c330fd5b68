"""The README's library example runs as written (against a lab of its own)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
from conftest import new_lab_dir

from ovn_k8s import ovsdb, translate
from ovn_k8s.sandbox.lab import Lab

pytestmark = pytest.mark.lab
README = Path(__file__).resolve().parents[2] / "README.md"


def test_library_example_runs():
    text = README.read_text()
    section = text[text.index("## Using ovn_k8s as a library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    d = new_lab_dir("readme")
    d.rmdir()
    lab = Lab(d, nodes=1)
    try:
        lab.up()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code.replace("unix:/run/ovn/ovnnb_db.sock", lab.nb_remote), {})
        assert '"ip_address":"10.128.1.5/24"' in out.getvalue()
        nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
        try:
            row = translate.lsp_row(nb.api, "default_web")
            assert row is not None and row.options["requested-chassis"] == "node1"
            assert "default_web" in {p.name for s in nb.rows("Logical_Switch")
                                     if s.name == "node1" for p in s.ports}
        finally:
            nb.close()
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)
