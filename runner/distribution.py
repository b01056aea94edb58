"""Cell images onto the nodes that will run them, before their shards get there.

Each node of a cluster has its own Docker engine. A shard that found its cell's image missing would build it while
holding a test slot (a 1 s shard taking 20 s), so the coordinator makes each cell's image present on the nodes
chosen for it first, in zero-CPU tasks that hold no test slot, and the scheduler places a cell's shards only on
nodes where its image is ready. Nodes that already hold the image are chosen first and are ready at once.

How an image reaches a node (``prepare``, run on the node):

- found there (the dependency image and the source layer of this snapshot);
- pulled from ``image.registry`` (the coordinator built it once and pushed it by its content tag), then the thin
  source layer is made there;
- or built there from its base. A base the node lacks is shipped from the coordinator's engine (``docker save``
  bytes through Ray's object store, loaded there), else pulled or bootstrapped there; if none works, the cell
  fails on that node with a line naming the node.

Which nodes a cell goes to (``targets``, pure): the nodes that may take its shards, as many as it has shards,
those holding its image first, then the least loaded.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner import engine, images
from runner.execution import ShardRequest
from runner.scheduler import Node, eligible

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class NodeImages:
    """What one node's engine holds: its matrix-run images and bases, by tag."""

    node_id: str
    hostname: str
    docker: bool
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Prepared:
    """How a cell's image was made present on one node (plain data, back from the node)."""

    node_id: str
    hostname: str
    env_tag: str = ""
    how: str = ""  # "present", "built", "pulled", "built (base loaded)"
    seconds: float = 0.0
    error: str = ""  # why it could not be made there ("" when it was)
    log_tail: str = ""


@dataclass
class NodePlan:
    """Which nodes each cell's image goes to; ``ready`` holds what is there already."""

    targets: dict[str, list[str]] = field(default_factory=dict)  # cell id -> node ids
    ready: dict[str, set[str]] = field(default_factory=dict)  # cell id -> node ids holding its image now


def targets(
    requests: dict[str, ShardRequest],
    shard_counts: dict[str, int],
    nodes: list[Node],
    held: dict[str, frozenset[str]],
    source_tags: dict[str, str],
) -> NodePlan:
    """For each cell: the nodes its image goes to. At most one node per shard of the cell (more could never be
    used at once), nodes holding its source layer first, then its dependency image, then the node with the fewest
    images to make; ties by node order. ``held``: node id -> tags its engine holds."""
    plan = NodePlan()
    load: dict[str, int] = {n.node_id: 0 for n in nodes}
    order = {n.node_id: i for i, n in enumerate(nodes)}
    # cells with the fewest options choose first, so a labelled cell is not crowded out of its only node
    by_options = sorted(requests, key=lambda cid: (len(eligible(nodes, requests[cid])), cid))
    for cid in by_options:
        req = requests[cid]
        options = [n.node_id for n in eligible(nodes, req) if n.docker]
        src, env = source_tags.get(cid, ""), req.image.tag

        def rank(node_id: str, src: str = src, env: str = env) -> tuple[int, int, int]:
            tags = held.get(node_id, frozenset())
            return (0 if src in tags else 1 if env in tags else 2, load[node_id], order[node_id])

        chosen = sorted(options, key=rank)[: max(1, shard_counts.get(cid, 1))]
        plan.targets[cid] = chosen
        plan.ready[cid] = {n for n in chosen if src in held.get(n, frozenset())}
        for n in chosen:
            if n not in plan.ready[cid]:
                load[n] += 1
    return plan


# ---------------------------------------------------------------------------------------------------- on a node


def inventory() -> NodeImages:
    """The Ray task body: the matrix-run images and bases this node's engine holds."""
    import ray

    node_id = str(ray.get_runtime_context().get_node_id())
    try:
        client = engine.connect(timeout=30)
        tags = frozenset(t for im in client.images.list() for t in im.tags)
    except Exception:
        return NodeImages(node_id, socket.gethostname(), False)
    return NodeImages(node_id, socket.gethostname(), True, tags)


def registry_ref(registry: str, tag: str) -> str:
    """Where a dependency image lives in ``image.registry`` (HOST:PORT/PREFIX): by its content tag."""
    repo, _, name = tag.partition(":")
    return f"{registry.rstrip('/')}/{repo.split('/')[-1]}:{name}"


def push(client: docker.DockerClient, tag: str, registry: str) -> str:
    """Push a dependency image to the registry by its content tag (the coordinator, once per image)."""
    ref = registry_ref(registry, tag)
    repo, _, name = ref.rpartition(":")
    client.images.get(tag).tag(repo, name)
    errors = [str(line.get("error")) for line in client.images.push(repo, tag=name, stream=True, decode=True)]
    errors = [e for e in errors if e and e != "None"]
    if errors:
        raise images.BuildFailed(f"pushing {tag} to {registry} failed: {errors[0][:300]}")
    return ref


def _pull(client: docker.DockerClient, tag: str, registry: str) -> bool:
    """The dependency image from the registry, tagged as this node's own; False when the registry lacks it."""
    import docker.errors

    ref = registry_ref(registry, tag)
    repo, _, name = ref.rpartition(":")
    try:
        image = client.images.pull(repo, tag=name)
    except docker.errors.APIError:
        return False
    env_repo, _, env_name = tag.partition(":")
    image.tag(env_repo, env_name)
    return True


def save_image(ref: str) -> bytes:
    """``docker save`` of an image of this node's engine, as bytes (a base to ship to a node that lacks it)."""
    proc = subprocess.run(["docker", "save", ref], capture_output=True, check=False)
    if proc.returncode != 0:
        raise images.BuildFailed(f"docker save {ref} failed: {proc.stderr.decode(errors='replace')[:300]}")
    return proc.stdout


def _load(data: bytes) -> None:
    proc = subprocess.run(["docker", "load", "-q"], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise images.BuildFailed(f"docker load of a shipped base failed: {proc.stderr.decode(errors='replace')[:300]}")


def prepare(
    spec: images.ImageSpec,
    tarball: bytes,
    source_digest: str,
    install_project: bool,
    roots: tuple[str, ...],
    workdir: str,
    labels: dict[str, str],
    registry: str = "",
    base: bytes | None = None,
) -> Prepared:
    """The Ray task body: make the cell's image (dependency image and source layer) present on this node.
    Never raises: what went wrong comes back as ``error``, naming the node."""
    import ray

    node_id, host = str(ray.get_runtime_context().get_node_id()), socket.gethostname()
    started = time.monotonic()
    how = "present"
    try:
        client = engine.connect(timeout=60)
        if registry and images.local_image_id(client, spec.tag) is None:
            how = "pulled" if _pull(client, spec.tag, registry) else how
        if how == "present" and images.local_image_id(client, spec.tag) is None:
            how = "built"
            if base is not None and images.local_image_id(client, images.base_ref(spec)) is None:
                _load(base)
                how = "built (base loaded)"
        if how == "pulled":  # the registry's image is the coordinator's build: not judged by this node's base
            env_tag = spec.tag
            images.ensure_source_layer(
                client, env_tag, tarball, source_digest, install_project, labels=labels, roots=roots, workdir=workdir
            )
        else:
            image = images.ensure_cell_image(
                client, spec, tarball, source_digest, install_project, roots, labels=labels, workdir=workdir
            )
            env_tag = image.env_tag
            how = "built" if how == "present" and image.env_built else how
    except images.BuildFailed as exc:
        return Prepared(node_id, host, error=f"on node {host} ({node_id[:12]}): {exc}", log_tail=exc.log_tail)
    except Exception as exc:
        return Prepared(node_id, host, error=f"on node {host} ({node_id[:12]}): {exc.__class__.__name__}: {exc}"[:600])
    return Prepared(node_id, host, env_tag, how, time.monotonic() - started)


def missing_base(spec: images.ImageSpec, held: Iterable[str]) -> bool:
    """Whether a node holding ``held`` would need the cell's base to build its image there."""
    tags = set(held)
    return spec.tag not in tags and images.base_ref(spec) not in tags
