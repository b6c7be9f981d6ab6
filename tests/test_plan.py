"""The plan's rendered requests: the submit jobs write request files from them, as a fresh rendering would."""

from __future__ import annotations

import shutil

import yaml

from batchpipe.joblog import JobLog
from batchpipe.submit import write_request_file
from batchpipe.workflow import load_plan

from conftest import make_workspace


def request_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "batch_requests").rglob("*.json*"))}


def test_request_files_from_the_plans_rendering_equal_a_fresh_rendering(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    config = yaml.safe_load((ws.root / "config.yaml").read_text()) | {"chunk_size": 7}
    log = JobLog(None, echo=False)

    plan = load_plan(config, root=ws.root, dryrun=True, verbose=False)  # cold: every issue file is read
    members = {
        (name, path)
        for name, pp in plan.processors.items()
        for chunk in pp.new.values()
        for member in chunk.members
        for path in member.paths
    }
    assert members and set(plan.rendered) == members  # only what new chunks send, all of it
    for name, pp in plan.processors.items():
        for chunk in pp.new:
            write_request_file(plan, name, chunk, log)
    assert plan.rendered == {}  # each taken once
    kept = request_files(ws.root)
    assert len(kept) == 2 * sum(len(pp.new) for pp in plan.processors.values())

    shutil.rmtree(ws.root / "batch_requests")
    again = load_plan(config, root=ws.root, dryrun=True, verbose=False)  # the scan cache: nothing rendered
    assert again.rendered == {}
    for name, pp in again.processors.items():
        assert list(pp.new) == list(plan.processors[name].new)
        for chunk in pp.new:
            write_request_file(again, name, chunk, log)  # renders each issue from its file
    assert request_files(ws.root) == kept
