"""Shared fixtures: a workspace (the workflow copied into a temp dir) and a way to run snakemake in it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_TGZ = REPO.parent / "shared" / "data" / "bitcoin-core-gui-issues.tgz"
WORKFLOW_FILES = ["Snakefile", "config.yaml", "rules", "schemas", "prompts", "profiles", "envs", "scripts", "report"]


@pytest.fixture(scope="session", autouse=True)
def _children_make_temp_folders_under_pytest(tmp_path_factory):
    """Child processes (Snakemake, `batchpipe`, the emulator) make their temp folders under pytest's temp
    folder: one a test kills on purpose leaves its folder there, which pytest rotates away, not in /tmp."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
    yield
    patch.undo()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace:
    root: Path

    def snakemake(
        self, *args: str, env: dict | None = None, check: bool = True, code: int = 0, timeout: float = 300
    ) -> Run:
        """`python -m snakemake ARGS` in the workspace, as a user runs it; with `check`, its exit code must be
        `code` (the README's table: 3 failed for good, 4 waiting, 5 work left)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *args],
            cwd=self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != code:
            raise AssertionError(f"snakemake {' '.join(args)} exited {proc.returncode}:\n{run.output[-6000:]}")
        return run

    def cli(self, *args: str) -> Run:
        """`batchpipe ARGS` in the workspace, in this process (a new interpreter each time is slow);
        `batchpipe` below runs a real `python -m batchpipe` where the process itself matters."""
        from batchpipe import cli

        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(self.root)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(list(args))
        finally:
            os.chdir(cwd)
        return Run(code, out.getvalue(), err.getvalue())

    def batchpipe(self, *args: str, env: dict | None = None, timeout: float = 300) -> Run:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "batchpipe", *args],
            cwd=self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def config(self, **updates) -> None:
        """Change config.yaml in place (top-level keys)."""
        path = self.root / "config.yaml"
        values = yaml.safe_load(path.read_text())
        values.update(updates)
        path.write_text(yaml.safe_dump(values, sort_keys=False))

    @property
    def issues(self) -> Path:
        return self.root / "data" / "issues"

    def results(self) -> dict[str, dict]:
        folder = self.root / "data" / "results"
        return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern))

    def local_batches(self) -> list[dict]:
        """Every batch the embedded local service holds (what the provider saw)."""
        folder = self.root / ".batchpipe" / "local" / "batches"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*/batch.json"))] if folder.exists() else []


def make_workspace(path: Path, issues: list[Path] | None = None) -> Workspace:
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / name)
    (path / "data" / "issues").mkdir(parents=True)
    for issue in issues if issues is not None else sorted((REPO / "data" / "issues").glob("*.json")):
        shutil.copy2(issue, path / "data" / "issues" / issue.name)
    return Workspace(path)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """The workflow with the bundled sample issues, in a temp dir."""
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def small_workspace(tmp_path) -> Workspace:
    """The workflow with 5 sample issues and only the product-labeling processor."""
    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:5]
    ws = make_workspace(tmp_path / "ws", issues)
    ws.config(processors=["product-labeling"])
    return ws


@pytest.fixture(scope="session")
def real_issues_dir(tmp_path_factory) -> Path:
    """All 341 real issues (metadata-backup shape), unpacked once."""
    if not SHARED_TGZ.exists():
        pytest.skip(f"{SHARED_TGZ} not found (the shared data folder sits beside the repository)")
    target = tmp_path_factory.mktemp("real")
    with tarfile.open(SHARED_TGZ) as tar:
        tar.extractall(target, filter="data")
    return target / "issues"
