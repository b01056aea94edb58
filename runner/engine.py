"""The Docker engine: connecting to it, and the one retry policy for transient Docker API failures.

This is the tenacity layer of DESIGN.md's "one retry layer per failure class": it retries a single API call
(create, start, inspect, remove) a few times with backoff. It never reruns tests; that is retry.py's job.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from runner.errors import EnvironmentProblem

if TYPE_CHECKING:
    import docker

T = TypeVar("T")

LABEL_RUN = "matrix-run.run"
LABEL_CELL = "matrix-run.cell"
LABEL_SHARD = "matrix-run.shard"
LABEL_ATTEMPT = "matrix-run.attempt"
LABEL_ROLE = "matrix-run.role"
LABEL_OWNER = "matrix-run.owner"  # host:pid:start time of the coordinator that owns the run
LABEL_JOB = "matrix-run.job"  # GCS-ADDRESS/JOB-ID: the Ray driver (coordinator) of the run, for other hosts


def _transient(exc: BaseException) -> bool:
    import docker.errors
    import requests.exceptions

    if isinstance(exc, docker.errors.NotFound | docker.errors.ImageNotFound):
        return False
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        return status >= 500 or (status == 409 and "removal" in str(exc).lower())
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError)


def api_call(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function that makes one Docker API call: retried 4 times on transient errors. tenacity is
    imported at the first call, so the modules that decorate import without it (the host executor runs on
    machines with neither Docker nor matrix-run's Docker-side packages)."""
    retrying: Callable[..., T] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        nonlocal retrying
        if retrying is None:
            from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

            retrying = retry(
                retry=retry_if_exception(_transient),
                stop=stop_after_attempt(4),
                wait=wait_exponential(multiplier=0.2, max=3),
                reraise=True,
            )(fn)
        return retrying(*args, **kwargs)

    return call


def connect(timeout: int = 120) -> docker.DockerClient:
    """A client for the local engine (DOCKER_HOST honoured); a one-line error when none answers."""
    import docker
    import docker.errors
    import requests.exceptions

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EnvironmentProblem(
            f"Docker engine not reachable at {where}: start it (e.g. 'dockerd &' or 'systemctl start docker') "
            "or set DOCKER_HOST"
        ) from None
    return client
