"""A real install: the package as a wheel carries what it reads, and the workflow runs on it.

An editable install reads everything from the clone, so it cannot show a file missing from the
package. Here the wheel pip builds is unpacked into a folder that comes first on the path of every
process of the run (Snakemake, its script jobs), as a `pip install .` into site-packages would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, make_workspace


def build_wheel(tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("batchpipe-*.whl")
    return wheel


@pytest.mark.workflow
def test_the_wheel_carries_its_schema_and_the_workflow_runs_on_it(tmp_path):
    wheel = build_wheel(tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    assert "batchpipe/config.schema.yaml" in names
    assert "batchpipe/service/engine.py" in names and "batchpipe/commands/status.py" in names
    assert not any(name.startswith(("tests/", "bench/", "rules/")) for name in names)

    ws = make_workspace(tmp_path / "ws", sorted((REPO / "data" / "issues").glob("*.json"))[:3])
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import batchpipe.config as c; print(c.__file__); print(c.SCHEMA_PATH.exists())"],
        cwd=ws.root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where == [str(site / "batchpipe" / "config.py"), "True"]

    run = ws.snakemake("--cores", "2", "results/all", env=env)
    assert "batchpipe run summary" in run.output
    assert len(ws.results()) == 6  # 3 issues x 2 processors, the recycling script job included
    assert (ws.root / "data" / "tasks" / "ACTIVE_TASKS.md").exists()
    status = ws.batchpipe("status", env=env)
    assert status.returncode == 0 and "product-labeling" in status.stdout
