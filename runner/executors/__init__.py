"""The executors: how a shard attempt runs on its node, one implementation per file, picked by the request.

- ``docker``: a fresh container of the cell image per attempt (executors/docker.py);
- ``host``: the node's own interpreter, a virtual environment per cell environment, a process group per attempt
  (executors/host.py), for rows that no Linux container can serve.
"""

from __future__ import annotations

import json
from pathlib import Path

from runner.execution import Executor, ShardRequest


def executor_for(name: str) -> Executor:
    """The executor called ``name`` (a cell's ``executor`` value, validated when the matrix was loaded)."""
    if name == "host":
        from runner.executors.host import HostExecutor

        return HostExecutor()
    from runner.executors.docker import DockerExecutor

    return DockerExecutor()


def write_inputs(folder: Path, req: ShardRequest, src: str, out: str) -> None:
    """The shard's inputs for entry.py and the plugin, as files in ``folder`` (seen by the shard as ``out``): the
    command and where it runs (``src``: the project as the shard sees it), its files, its node-id selection."""
    request = {
        "src": src,
        "out": out,
        "workdir": req.workdir,
        "command": list(req.command),
        "roots": list(req.roots),
        "select": bool(req.only or req.skip),
        "install_project": req.install_project,
        "coverage": {"source": list(req.coverage.source), "branch": req.coverage.branch}
        if req.coverage.enabled
        else None,
    }
    (folder / "request.json").write_text(json.dumps(request))
    if req.only or req.skip:
        select = {"only": list(req.only), "skip": list(req.skip), "fallback": req.rerun}
        (folder / "select.json").write_text(json.dumps(select))
    files = {"root": src, "exclude" if req.complement else "include": list(req.files)}
    (folder / "files.json").write_text(json.dumps(files))
