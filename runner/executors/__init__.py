"""The executors: how a shard attempt runs on its node, one implementation per file, picked by the request.

- ``docker``: a fresh container of the cell image per attempt (executors/docker.py);
- ``host``: the node's own interpreter, a virtual environment per cell environment, a process group per attempt
  (executors/host.py), for rows that no Linux container can serve.
"""

from __future__ import annotations

from runner.execution import Executor


def executor_for(name: str) -> Executor:
    """The executor called ``name`` (a cell's ``executor`` value, validated when the matrix was loaded)."""
    if name == "host":
        from runner.executors.host import HostExecutor

        return HostExecutor()
    from runner.executors.docker import DockerExecutor

    return DockerExecutor()
