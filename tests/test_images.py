"""Source layers on a real Docker engine: what a shard starts from."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from pathlib import Path

import pytest

from runner import images, plan
from tests.conftest import write_matrix

pytestmark = [pytest.mark.docker]


def test_source_layer_holds_compiled_modules_and_pytests_rewritten_tests(tmp_path: Path, docker_client) -> None:
    """Shards run with PYTHONDONTWRITEBYTECODE: the layer must already hold the bytecode, including pytest's
    assertion rewrites, so no shard compiles the project again. A file that fails to collect does not stop it."""
    project = tmp_path / "proj"
    files = {
        "pkg/__init__.py": f"# {uuid.uuid4()}: a snapshot no earlier run has built a layer for\n",
        "pkg/mod.py": "def double(x):\n    return 2 * x\n",
        "tests/conftest.py": "import pytest\n",
        "tests/test_ok.py": "from pkg.mod import double\n\ndef test_double():\n    assert double(2) == 4\n",
        "tests/test_broken.py": "raise ImportError('this file cannot be collected')\n",
        # outside tests.paths: the shards never import it, so neither may the layer's collection
        "scripts/test_side_effect.py": "open('/src/IMPORTED_OUTSIDE_ROOTS', 'w').close()\n",
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(textwrap.dedent(text))
    matrix = write_matrix(tmp_path, project, tests={"shards": 1, "install-project": False, "paths": ["tests"]})
    planned = plan.plan_matrix(str(matrix), [])
    cell = planned.cells[0]
    env_tag, _ = images.ensure(docker_client, images.specs_for(planned.mf, [cell], docker_client)[cell.id])

    tag, built = images.ensure_source_layer(
        docker_client,
        env_tag,
        planned.tree.tarball,
        planned.tree.digest,
        install_project=False,
        roots=planned.mf.tests.paths,
    )

    assert built
    listing = docker_client.containers.run(
        tag, ["sh", "-c", "ls /src /src/pkg/__pycache__ /src/tests/__pycache__"], remove=True
    ).decode()
    assert "mod.cpython-311.pyc" in listing
    assert "test_ok.cpython-311-pytest-" in listing  # pytest's own cache of the rewritten module
    assert "conftest.cpython-311-pytest-" in listing
    assert "IMPORTED_OUTSIDE_ROOTS" not in listing


def test_the_image_tag_does_not_depend_on_whether_the_base_exists_yet(tmp_path: Path, docker_client) -> None:
    """A cold run bootstraps or pulls its base during the run: the tag computed before that (base absent) must be
    the tag after it, or the second run rebuilds every image. A base that changes under its name (re-pulled)
    rebuilds the image in place, under the same tag."""
    base = f"matrix-run/t-base:{uuid.uuid4().hex[:10]}"
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    matrix = write_matrix(
        tmp_path,
        project,
        image={"base": base},
        tests={"shards": 1, "install-project": False},
    )
    planned = plan.plan_matrix(str(matrix), [])
    cell = planned.cells[0]
    assert images.local_image_id(docker_client, base) is None
    before = images.specs_for(planned.mf, [cell], docker_client)[cell.id]
    bookworm = docker_client.images.get("matrix-run/debian:bookworm")
    trixie = docker_client.images.get("matrix-run/debian:trixie")
    repo, _, tag = base.partition(":")
    try:
        bookworm.tag(repo, tag)  # the base arrives, as a bootstrap or a pull during a cold run makes it
        after = images.specs_for(planned.mf, [cell], docker_client)[cell.id]
        assert after.tag == before.tag

        steps: list[str] = []
        first, built_first = images.ensure(docker_client, after, step=steps.append)
        assert steps == ["installing 1 package"]  # what the live view and the log show while it runs
        again, built_again = images.ensure(docker_client, images.specs_for(planned.mf, [cell], docker_client)[cell.id])
        assert (first, built_first) == (before.tag, True)
        assert (again, built_again) == (before.tag, False)  # the second run builds nothing

        trixie.tag(repo, tag)  # the base changed under its name: rebuilt, same tag, from the new base
        rebuilt, built = images.ensure(docker_client, after)
        assert (rebuilt, built) == (before.tag, True)
        labels = docker_client.images.get(rebuilt).labels
        assert labels[images.LABEL_BASE_ID] == trixie.id
    finally:
        for ref in (before.tag, base):
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)
