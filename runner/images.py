"""Cell -> image spec with a content-hash tag; ensure / build / bootstrap. Docker lives here (and container.py).

An image holds a cell's dependencies, never the project's code: the project comes from its source tree at run
time, so a code change rebuilds nothing. The tag is a hash of everything that defines the environment (base
reference and local base id, Dockerfile text, build args, install lines, pip options, CA bundle, wheelhouse
listing, and this recipe's version); an unchanged environment is never rebuilt, a changed one always is. The
base image's local id is not part of the tag (it does not exist before a first pull or bootstrap, and a tag must
not depend on what this host happened to hold): a dependency image records the base id it was built from in a
label, and is rebuilt in place when the base present on the node has another id (a re-pulled ``python:3.11-slim``).

A build is: [docker build of the user's Dockerfile] -> base -> [heavy layer] -> one provisioning container (venv,
install with the host CA bundle and wheelhouses mounted read-only, the node's package cache read-write) -> docker
commit. Mounting instead of copying keeps multi-GB wheelhouses out of any build context.

The heavy layer: a cell's pins of heavy packages (torch, tensorflow, jax, ... and ``image.heavy``) are installed
first, in a layer of their own (``matrix-run/heavy:<hash>`` of the base, those pins, the installer and its options,
the CA bundle and the wheelhouse listing), and the cell's other packages into the same venv on top. Cells that pin
the same heavy packages and differ in small ones share that multi-GB layer on disk, and it is built once. An
install list that holds a pip option (``--index-url ...``) is not split: options apply to the whole line.

The installer (``image.installer``): uv (default; its binary, from matrix-run's own environment, is mounted
read-only) or pip, both with the node's package cache (``image.cache``) mounted read-write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import dependencies, engine
from runner.errors import EnvironmentProblem

if TYPE_CHECKING:
    import docker

    from runner.config import MatrixFile
    from runner.matrix import Cell

RECIPE_VERSION = "5"  # how dependency images are made (5: heavy layers, uv, the package cache)
SOURCE_RECIPE = "4"  # how source layers are made (container_side/prepare.py)
TEST_UID = 1000  # the unprivileged user shards run as (prepare.py adds it to the source layer)
LABEL_BASE_ID = "matrix-run.base-id"  # on a dependency image: the id of the base image it was built from
LABEL_HEAVY = "matrix-run.heavy"  # on a dependency image: the heavy layer it was built on
HEAVY_REPO = "matrix-run/heavy"
VENV = "/opt/matrix-run/venv"
SOURCE_DIR = "/src"
SOURCE_REPO = "matrix-run/src"
SOURCE_LAYERS_KEPT = 3  # per dependency image; older source layers are pruned
SETUP_FAILED = 250  # prepare.py's exit code when the project cannot be installed
SIDE_DIR = Path(__file__).parent / "container_side"
IMAGE_REPO = "matrix-run/env"
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"
PIP_CONFIGS = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "~/.config/pip/pip.conf", "~/.pip/pip.conf")
PATH_ENV = f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UV_IN_CONTAINER = "/mr/bin/uv"
CACHE_IN_CONTAINER = "/mr/cache"
WHEELS_IN_CONTAINER = "/mr/wheels"
UV_UNUSABLE = 251  # provision.py's exit code when the uv executable does not run in the base image
CACHE_DIR = "package-cache"  # image.cache: auto, in the node's private state folder

# Packages whose installs are large (hundreds of MB to GBs, with what they pull in): a cell's pins of these go to
# the shared heavy layer. Names as PEP 503 normalizes them; image.heavy adds more.
HEAVY_PACKAGES = frozenset(
    {
        "torch",
        "torchvision",
        "torchaudio",
        "triton",
        "tensorflow",
        "tensorflow-cpu",
        "tensorflow-gpu",
        "tf-nightly",
        "jax",
        "jaxlib",
        "paddlepaddle",
        "paddlepaddle-gpu",
        "mxnet",
        "onnxruntime",
        "onnxruntime-gpu",
        "cupy",
        "xformers",
        "tensorrt",
    }
)
HEAVY_PREFIXES = ("nvidia-", "cupy-cuda", "jax-cuda")  # CUDA libraries as wheels, CUDA builds of cupy and jax
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def package_name(requirement: str) -> str | None:
    """The PEP 503 name a requirement line asks for (``Torch==2.13.0+cpu`` -> ``torch``); None for a pip option, a
    path, a URL or a file."""
    m = _REQUIREMENT_NAME.match(requirement)
    if requirement.lstrip().startswith("-") or m is None:
        return None
    rest = requirement[m.end() :].lstrip()
    if rest and rest[0] not in "=<>!~[;@(,":
        return None  # pkg/sub, git+https://..., a file name with spaces
    return dependencies.normalize(m.group(1))


def is_heavy(name: str, more: tuple[str, ...] = ()) -> bool:
    """Whether a (normalized) package name belongs in the heavy layer: a known heavy package or one of ``more``."""
    extra = {dependencies.normalize(n) for n in more}
    return name in HEAVY_PACKAGES or name in extra or name.startswith(HEAVY_PREFIXES)


def split_heavy(install: tuple[str, ...], more: tuple[str, ...] | None = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(heavy, light) of a cell's install list: the requirements of heavy packages, and the rest.

    ``more`` is image.heavy (None: no heavy layer). A list with a pip option in it is not split (the option would
    apply to one layer only), nor is one without a heavy requirement.
    """
    if more is None or any(item.lstrip().startswith("-") for item in install):
        return (), install
    heavy = tuple(r for r in install if (name := package_name(r)) is not None and is_heavy(name, more))
    return heavy, tuple(r for r in install if r not in heavy)


class BuildFailed(Exception):
    """An image could not be built; fails only the cells that need it."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class SetupFailed(BuildFailed):
    """The project itself could not be installed into a cell's image: an error of that cell, not of the host."""


@dataclass(frozen=True)
class ImageSpec:
    """Everything that defines one cell environment. Plain data: it crosses the Ray boundary."""

    base: str
    bootstrap: str | None = None
    dockerfile_text: str | None = None
    dockerfile_context: str | None = None  # host path; only the coordinator node builds Dockerfiles
    build_args: tuple[tuple[str, str], ...] = ()
    install: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()
    pytest: str = "pytest"
    extra: tuple[str, ...] = ()  # what matrix-run itself needs inside: build backend, coverage
    ca_bundle: bytes | None = None
    wheelhouses: tuple[str, ...] = ()  # host folders; the tag holds their listing (wheelhouse_digest), not paths
    wheelhouse_digest: str = ""
    installer: str = "uv"  # "uv" or "pip"
    heavy_names: tuple[str, ...] | None = ()  # image.heavy: more heavy package names; None: no heavy layer
    cache: str = "auto"  # image.cache: "auto", "none" or a host folder; where packages are kept, not what: no tag

    @property
    def digest(self) -> str:
        fields = asdict(self)
        for name in ("dockerfile_context", "wheelhouses", "cache"):
            fields.pop(name)
        fields["ca_bundle"] = hashlib.sha256(self.ca_bundle).hexdigest() if self.ca_bundle else None
        fields["recipe"] = RECIPE_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.digest[:20]}"

    @property
    def wheelhouse(self) -> str | None:
        """The first wheelhouse folder, for callers that take one (``wheelhouses`` has them all)."""
        return self.wheelhouses[0] if self.wheelhouses else None

    @property
    def heavy(self) -> tuple[str, ...]:
        """The cell's requirements that go to its heavy layer (empty: the image is one layer over its base)."""
        return split_heavy(self.install, self.heavy_names)[0]

    @property
    def heavy_tag(self) -> str:
        """The heavy layer's tag: a hash of what it is made of (base, heavy pins, installer, options, CA bundle,
        wheelhouse listing, recipe), so every cell with the same heavy pins on the same base names the same layer;
        "" when the cell has none."""
        heavy = self.heavy
        if not heavy:
            return ""
        fields = {
            "layer": "heavy",
            "base": self.base,
            "bootstrap": self.bootstrap,
            "dockerfile_text": self.dockerfile_text,
            "build_args": list(self.build_args),
            "heavy": sorted(heavy),
            "pip_args": list(self.pip_args),
            "installer": self.installer,
            "ca_bundle": hashlib.sha256(self.ca_bundle).hexdigest() if self.ca_bundle else None,
            "wheelhouse_digest": self.wheelhouse_digest,
            "recipe": RECIPE_VERSION,
        }
        return f"{HEAVY_REPO}:{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]}"


# ---------------------------------------------------------------------------------------------------- host facts


def _pip_config_values(key: str) -> list[str]:
    import configparser

    values: list[str] = []
    for name in PIP_CONFIGS:
        path = Path(name).expanduser()
        if not path.is_file():
            continue
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install"):
            if parser.has_option(section, key):
                values.extend(parser.get(section, key).split())
    return values


def find_ca_bundle(option: str) -> bytes | None:
    """The host CA bundle for pip inside builds: explicit path, or auto-detected, or none."""
    if option == "none":
        return None
    if option != "auto":
        return Path(option).read_bytes()
    candidates = [
        os.environ.get("MATRIX_RUN_CA_BUNDLE"),
        os.environ.get("PIP_CERT"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        *_pip_config_values("cert"),
        DEFAULT_CA,
    ]
    for cand in candidates:
        if cand and Path(cand).is_file():
            return Path(cand).read_bytes()
    return None


def find_wheelhouses(option: tuple[str, ...] | str) -> tuple[str, ...]:
    """image.wheelhouse -> host folders of wheels for --find-links: the folders given, or ``auto``'s one, or none."""
    options = (option,) if isinstance(option, str) else option
    if options in (("auto",), ("none",)):
        found = find_wheelhouse(options[0])
        return (found,) if found else ()
    return tuple(dict.fromkeys(str(Path(folder).resolve()) for folder in options))


def find_wheelhouse(option: str) -> str | None:
    """A host folder of wheels for --find-links: explicit, or auto-detected from pip's own settings."""
    if option == "none":
        return None
    if option != "auto":
        return str(Path(option).resolve())
    candidates = [
        os.environ.get("MATRIX_RUN_WHEELHOUSE"),
        *(os.environ.get("PIP_FIND_LINKS", "").split()),
        *_pip_config_values("find-links"),
    ]
    for cand in candidates:
        if cand and not cand.startswith(("http:", "https:")):
            path = Path(cand.removeprefix("file://"))
            if path.is_dir():
                return str(path.resolve())
    return None


def _wheelhouse_digest(paths: tuple[str, ...] | str | None) -> str:
    """A hash of the wheelhouses' listings (file names and sizes), in order: a wheel added or replaced rebuilds."""
    folders = (paths,) if isinstance(paths, str) else paths or ()
    if not folders:
        return ""
    entries: list[str] = []
    for folder in folders:
        entries.append("--")  # where one folder's listing ends: pip and uv look in them in order
        entries += sorted(f"{p.name}:{p.stat().st_size}" for p in Path(folder).iterdir() if p.is_file())
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def build_requires(project: Path) -> tuple[str, ...]:
    """The project's build backend requirements, so the project can be installed at run time without network."""
    import tomllib

    pyproject = project / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        build_system = data.get("build-system", {})
        reqs = build_system.get("requires")
        if isinstance(reqs, list) and reqs:
            # what backends ask for only through their get_requires_for_build_* hooks: hatchling's editable
            # builds need 'editables', setuptools < 70.1 needs 'wheel' for any wheel
            backend = str(build_system.get("build-backend", ""))
            extra = {"hatchling": ("editables",), "setuptools": ("wheel",)}.get(backend.split(".", maxsplit=1)[0], ())
            return (*(str(r) for r in reqs), *extra)
        if "build-system" in data or (project / "setup.py").is_file() or (project / "setup.cfg").is_file():
            return ("setuptools>=64", "wheel")
        return ()
    if (project / "setup.py").is_file():
        return ("setuptools>=64", "wheel")
    return ()


def specs_for(mf: MatrixFile, cells: list[Cell], client: docker.DockerClient | None = None) -> dict[str, ImageSpec]:
    """cell id -> ImageSpec. Host facts (CA bundle, wheelhouse, base ids) are read once for all cells."""
    ca = find_ca_bundle(mf.image.ca_bundle)
    wheelhouses = find_wheelhouses(mf.image.wheelhouse)
    wh_digest = _wheelhouse_digest(wheelhouses)
    dockerfile_text = mf.image.dockerfile.read_text(encoding="utf-8") if mf.image.dockerfile else None
    extra: tuple[str, ...] = build_requires(mf.project) if mf.tests.install_project else ()
    extra = (*extra, *mf.requires)  # the project's declared dependencies, extras and groups (dependencies.py)
    if mf.coverage.enabled:
        extra = (*extra, "coverage[toml]")
    out = {}
    for cell in cells:
        out[cell.id] = ImageSpec(
            base=cell.base,
            bootstrap=cell.bootstrap,
            dockerfile_text=dockerfile_text,
            dockerfile_context=str(mf.project) if dockerfile_text else None,
            build_args=cell.build_args,
            install=cell.install,
            pip_args=mf.image.pip_args,
            pytest=mf.image.pytest,
            extra=extra,
            ca_bundle=ca,
            wheelhouses=wheelhouses,
            wheelhouse_digest=wh_digest,
            installer=mf.image.installer,
            heavy_names=mf.image.heavy,
            cache=mf.image.cache,
        )
    return out


# ---------------------------------------------------------------------------------------------------- docker side


@engine.api_call
def local_image_id(client: docker.DockerClient, ref: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """One builder per image on this node: a thread lock, then a file lock in this user's private state folder
    (Ray workers are processes)."""
    from runner import workspace

    with _locks_guard:
        thread_lock = _locks.setdefault(key, threading.Lock())
    with thread_lock:
        fd = workspace.open_lock(hashlib.sha256(key.encode()).hexdigest()[:32])
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def bootstrap(client: docker.DockerClient, suite: str, tag: str, log: Path | None = None) -> str:
    """Make a Debian base image without any registry: debootstrap + docker import. Returns the image id."""
    if shutil.which("debootstrap") is None:
        raise EnvironmentProblem(
            f"cannot bootstrap {tag}: debootstrap is not installed; run 'apt-get install -y debootstrap'"
        )
    mirror = os.environ.get("MATRIX_RUN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(prefix=f"matrix-run-bootstrap-{suite}-") as tmp:
        root = Path(tmp) / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            suite,
            str(root),
            mirror,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise BuildFailed(f"debootstrap {suite} failed (exit {proc.returncode})", tail)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imp = subprocess.run(
            ["docker", "import", "-c", 'CMD ["/bin/bash"]', "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise BuildFailed(f"docker import of {suite} failed", imp.stderr[-2000:])
    image_id = local_image_id(client, tag)
    if image_id is None:
        raise BuildFailed(f"bootstrapped image {tag} is missing after import")
    return image_id


Step = Callable[[str], None]  # told what an image step is doing now ("installing 3 packages")


def _no_step(text: str) -> None:
    pass


def ensure_base(client: docker.DockerClient, spec: ImageSpec, log: Path | None, step: Step = _no_step) -> str:
    """The base image reference, present locally: found, pulled, bootstrapped, or built from the Dockerfile."""
    import docker.errors

    if spec.dockerfile_text is not None:
        step("building the Dockerfile")
        return _build_dockerfile(client, spec, log)
    with _lock(f"base:{spec.base}"):
        if local_image_id(client, spec.base):
            return spec.base
        pull_error = ""
        step(f"pulling {spec.base}")
        try:
            repo, _, tag = spec.base.rpartition(":") if ":" in spec.base.split("/")[-1] else (spec.base, "", "latest")
            client.images.pull(repo, tag=tag)
            return spec.base
        except docker.errors.APIError as exc:
            pull_error = str(exc.explanation or exc).splitlines()[0][:200]
        if spec.bootstrap:
            step(f"bootstrapping debian:{spec.bootstrap} (debootstrap)")
            bootstrap(client, spec.bootstrap, spec.base, log.with_suffix(".bootstrap.log") if log else None)
            return spec.base
        raise BuildFailed(
            f"base image {spec.base} is not on this host and could not be pulled ({pull_error}); "
            "set image.bootstrap to a Debian suite, or run 'matrix-run images bootstrap SUITE --tag "
            f"{spec.base}'"
        )


def check_bases(client: docker.DockerClient, specs: dict[str, ImageSpec]) -> None:
    """Before anything runs: every base image is here, pullable, or can be bootstrapped or built."""
    import docker.errors

    from runner.errors import EnvironmentProblem

    for spec in {s.base: s for s in specs.values() if s.dockerfile_text is None and not s.bootstrap}.values():
        if local_image_id(client, spec.base):
            continue
        try:
            repo, _, tag = spec.base.rpartition(":") if ":" in spec.base.split("/")[-1] else (spec.base, "", "latest")
            client.images.pull(repo, tag=tag)
        except docker.errors.APIError as exc:
            why = str(exc.explanation or exc).splitlines()[0][:160]
            raise EnvironmentProblem(
                f"base image {spec.base} is not on this host and cannot be pulled ({why}); set image.bootstrap "
                f"to a Debian suite, or run 'matrix-run images bootstrap SUITE --tag {spec.base}'"
            ) from None


def _build_dockerfile(client: docker.DockerClient, spec: ImageSpec, log: Path | None) -> str:
    import docker.errors

    tag = f"matrix-run/base:{spec.digest[:20]}"
    with _lock(tag):
        if local_image_id(client, tag):
            return tag
        if spec.dockerfile_context is None or spec.dockerfile_text is None:
            raise BuildFailed("a Dockerfile base can only be built on the coordinator node")
        with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile", delete=False) as fh:
            fh.write(spec.dockerfile_text)
            dockerfile = fh.name
        lines: list[str] = []
        try:
            _, stream = client.images.build(
                path=spec.dockerfile_context,
                dockerfile=dockerfile,
                buildargs=dict(spec.build_args),
                tag=tag,
                rm=True,
                forcerm=True,
                labels={engine.LABEL_ROLE: "base"},
            )
            lines = [str(chunk.get("stream", "")) for chunk in stream]
        except docker.errors.BuildError as exc:
            lines = [str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log]
            _write_log(log, "".join(lines))
            raise BuildFailed(f"docker build of the Dockerfile failed: {exc.msg}", "".join(lines)[-3000:]) from None
        finally:
            os.unlink(dockerfile)
        _write_log(log, "".join(lines))
        return tag


def _write_log(log: Path | None, text: str) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(text)


def ensure(
    client: docker.DockerClient,
    spec: ImageSpec,
    log: Path | None = None,
    labels: dict[str, str] | None = None,
    step: Step = _no_step,
) -> tuple[str, bool]:
    """The spec's image, present locally. Returns (tag, built): built is False when it was already there.

    ``labels`` go on the provisioning container, so an interrupted run can find and remove it.
    """
    tag = spec.tag
    if _current(client, spec):
        return tag, False
    with _lock(tag):
        if _current(client, spec):
            return tag, False
        base = ensure_base(client, spec, log, step)
        base_id = local_image_id(client, base) or ""
        below, heavy_tag = base, ""
        if spec.heavy:
            heavy_tag, _ = ensure_heavy(client, spec, base, base_id, log, labels, step)
            below = heavy_tag
        light = [spec.pytest, *spec.extra, *(r for r in spec.install if r not in spec.heavy)]
        step(f"installing {len(light)} package{'s' if len(light) != 1 else ''}")
        # the heavy pins again: already satisfied, they keep the cell's packages from moving them (or fail as one
        # install of the whole list would)
        requirements = [spec.pytest, *spec.extra, *spec.install]
        _provision(client, spec, below, tag, log, labels or {}, base_id, requirements, create=not heavy_tag)
        return tag, True


def ensure_heavy(
    client: docker.DockerClient,
    spec: ImageSpec,
    base: str,
    base_id: str,
    log: Path | None = None,
    labels: dict[str, str] | None = None,
    step: Step = _no_step,
) -> tuple[str, bool]:
    """The spec's heavy layer (venv + its heavy pins over the base), present locally: (tag, built).

    One builder per layer on this node: a cell that needs a layer another cell is building waits for it, then
    builds its own small layer on top.
    """
    tag = spec.heavy_tag
    if _heavy_current(client, tag, base_id):
        return tag, False
    with _lock(tag):
        if _heavy_current(client, tag, base_id):
            return tag, False
        step(f"installing the heavy layer ({', '.join(spec.heavy)}), shared by cells with the same pins")
        _provision(client, spec, base, tag, log, labels or {}, base_id, list(spec.heavy), role="heavy")
        return tag, True


def _heavy_current(client: docker.DockerClient, tag: str, base_id: str) -> bool:
    """The heavy layer is here, built from the base this node holds now (or holds no longer)."""
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    built_from = str((image.attrs.get("Config") or {}).get("Labels", {}).get(LABEL_BASE_ID) or "")
    return not built_from or not base_id or built_from == base_id


def _current(client: docker.DockerClient, spec: ImageSpec) -> bool:
    """The spec's image is here and was built from the base this node holds now (or holds no longer)."""
    import docker.errors

    try:
        image = client.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    built_from = str((image.attrs.get("Config") or {}).get("Labels", {}).get(LABEL_BASE_ID) or "")
    if spec.dockerfile_text is not None or not built_from:
        return True
    now = local_image_id(client, spec.base)
    return now is None or now == built_from


def source_layer_tag(
    env_tag: str, source_digest: str, install_project: bool, roots: tuple[str, ...] = (), workdir: str = ""
) -> str:
    key = f"{env_tag}|{source_digest}|{install_project}|{RECIPE_VERSION}|{SOURCE_RECIPE}|{json.dumps(list(roots))}"
    key += f"|{workdir}"
    return f"{SOURCE_REPO}:{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def ensure_source_layer(
    client: docker.DockerClient,
    env_tag: str,
    tarball: bytes,
    source_digest: str,
    install_project: bool,
    log: Path | None = None,
    labels: dict[str, str] | None = None,
    roots: tuple[str, ...] = (),
    workdir: str = "",
    step: Step = _no_step,
) -> tuple[str, bool]:
    """A thin layer over the cell image: the project unpacked in /src and installed, and its bytecode made (pytest
    collects from ``roots``, the shards' tests.paths, or as configured). Returns (tag, built).

    Built once per (cell image, source snapshot) and node; every shard of the cell starts from it, so shards pay
    for neither unpacking nor installing, and an unchanged tree reuses the layer of the previous run.
    """

    from runner import source

    tag = source_layer_tag(env_tag, source_digest, install_project, roots, workdir)
    if local_image_id(client, tag):
        return tag, False
    with _lock(tag):
        if local_image_id(client, tag):
            return tag, False
        step("preparing the source layer (project unpacked, installed, compiled)")
        tar_path = source.node_copy(tarball, source_digest)
        code, tail = _run_and_commit(
            client,
            env_tag,
            [
                "python",
                "/mr/side/prepare.py",
                "/mr/source.tar",
                SOURCE_DIR,
                "1" if install_project else "0",
                json.dumps(list(roots)),
                workdir,
            ],
            {
                str(tar_path): {"bind": "/mr/source.tar", "mode": "ro"},
                str(SIDE_DIR): {"bind": "/mr/side", "mode": "ro"},
            },
            {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore", "HOME": "/tmp"},
            labels or {},
            tag,
            [
                f"WORKDIR {SOURCE_DIR}",
                f"LABEL {engine.LABEL_ROLE}=source",
                f"LABEL matrix-run.env={env_tag}",
                f"LABEL matrix-run.source={source_digest}",
            ],
            log,
        )
        if code == SETUP_FAILED:
            raise SetupFailed("the project could not be installed in the cell image", tail)
        if code != 0:
            raise BuildFailed(f"preparing the project source failed (exit {code})", tail)
        _prune_source_layers(client, env_tag, keep=tag)
        return tag, True


@dataclass(frozen=True)
class CellImage:
    """What a cell's shards start from on this node: the dependency image and the source layer over it."""

    env_tag: str
    tag: str  # the source layer
    env_built: bool  # built now, not found
    layer_built: bool


def ensure_cell_image(
    client: docker.DockerClient,
    spec: ImageSpec,
    tarball: bytes,
    source_digest: str,
    install_project: bool,
    roots: tuple[str, ...] = (),
    log: Path | None = None,
    labels: dict[str, str] | None = None,
    workdir: str = "",
    step: Step = _no_step,
) -> CellImage:
    """``ensure`` the dependency image, then ``ensure_source_layer`` over it."""
    env_tag, env_built = ensure(client, spec, log, labels, step)
    tag, layer_built = ensure_source_layer(
        client, env_tag, tarball, source_digest, install_project, log, labels, roots=roots, workdir=workdir, step=step
    )
    return CellImage(env_tag, tag, env_built, layer_built)


def _prune_source_layers(client: docker.DockerClient, env_tag: str, keep: str) -> None:
    """Keep the newest few source layers of one dependency image; older ones only take disk."""
    import docker.errors

    layers = client.images.list(filters={"label": [f"{engine.LABEL_ROLE}=source", f"matrix-run.env={env_tag}"]})
    layers.sort(key=lambda im: str(im.attrs.get("Created", "")), reverse=True)
    for old in layers[SOURCE_LAYERS_KEPT:]:
        if keep in old.tags:
            continue
        with contextlib.suppress(docker.errors.APIError):  # in use by a running shard: next time
            client.images.remove(old.id, noprune=False)


def uv_binary() -> str | None:
    """The uv executable of matrix-run's own environment (the ``uv`` wheel from PyPI), else one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.resolve())
    try:
        import uv  # type: ignore[import-not-found,unused-ignore]

        return str(Path(uv.find_uv_bin()).resolve())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return str(Path(found).resolve()) if found else None


def cache_folder(option: str) -> Path | None:
    """image.cache on this node: ``auto`` is a folder of matrix-run's private state folder; None for ``none``.

    pip keeps what it downloads and builds there (not wheels it installs from a wheelhouse, which are local
    already); uv keeps every wheel unpacked, a wheelhouse's too, so a second image of the same packages copies
    files instead of unzipping. Shared by every build on the node; where a cache is is never part of a tag.
    """
    from runner import workspace

    if option == "none":
        return None
    if option == "auto":
        return workspace.subdir(CACHE_DIR)
    path = Path(option)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ImageSize:
    """One cell image on this node, as ``docker image inspect`` has it."""

    tag: str
    cells: tuple[str, ...]
    size: int  # bytes of the whole image, its base included (what `docker images` lists)
    own: int  # bytes of its own layers: above its heavy layer, else above its base
    heavy: str = ""  # the heavy layer it is built on ("" when none)


@dataclass(frozen=True)
class ImagesDisk:
    """What a run's cell images hold on this node's disk: each once, and all of them together."""

    images: tuple[ImageSize, ...]
    disk: int  # bytes they hold together: every layer once (shared heavy layers and bases once)
    sizes: int  # their sizes added up: what they would hold if they shared no layer
    heavy_layers: int  # distinct heavy layers they are built on


def _layer_chain(client: docker.DockerClient, ref: str, nodes: dict[tuple[str, ...], int]) -> dict[str, Any]:
    """Inspect ``ref`` and every image it was built from (docker's Parent; matrix-run's heavy and base labels),
    recording each one's layer list -> size in ``nodes``. The inspected attributes of ``ref``; {} when absent."""
    import docker.errors

    first: dict[str, Any] = {}
    todo, seen = [ref], set()
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            attrs = client.images.get(name).attrs
        except docker.errors.ImageNotFound:
            continue
        first = first or attrs
        layers = tuple((attrs.get("RootFS") or {}).get("Layers") or ())
        nodes[layers] = int(attrs.get("Size") or 0)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        todo += [str(attrs.get("Parent") or ""), str(labels.get(LABEL_HEAVY, "")), str(labels.get(LABEL_BASE_ID, ""))]
    return first


def _below(layers: tuple[str, ...], nodes: dict[tuple[str, ...], int]) -> tuple[str, ...] | None:
    """The longest layer list in ``nodes`` that ``layers`` is built on (a proper prefix), if any."""
    best: tuple[str, ...] | None = None
    for other in nodes:
        if len(other) < len(layers) and layers[: len(other)] == other and (best is None or len(other) > len(best)):
            best = other
    return best


def disk_usage(client: docker.DockerClient, cells_by_tag: dict[str, list[str]]) -> ImagesDisk:
    """Sizes of the cell images (tag -> the cells it serves) and the disk they hold together on this node.

    Docker stores a layer once, however many images use it, and sizes an image by all its layers. Each image
    below is recorded with the images it was built from (its heavy layer, its base), as lists of layer ids; a
    list's own bytes are its size less that of the longest list it extends, and the disk held together is the sum
    of the own bytes of every distinct list: each layer once. (A layer shared only through an ancestor that is no
    local image, two pulled bases built on one untagged parent, would count twice.)
    """
    nodes: dict[tuple[str, ...], int] = {}
    found: list[tuple[str, tuple[str, ...], tuple[str, ...], int, str]] = []
    for tag, cells in cells_by_tag.items():
        attrs = _layer_chain(client, tag, nodes)
        if not attrs:
            continue
        layers = tuple((attrs.get("RootFS") or {}).get("Layers") or ())
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        found.append((tag, tuple(cells), layers, int(attrs.get("Size") or 0), str(labels.get(LABEL_HEAVY, ""))))
    own = {}
    for layers, size in nodes.items():
        below = _below(layers, nodes)
        own[layers] = max(0, size - nodes[below]) if below is not None else size
    return ImagesDisk(
        images=tuple(ImageSize(tag, cells, size, own[layers], heavy) for tag, cells, layers, size, heavy in found),
        disk=sum(own.values()),
        sizes=sum(size for _, _, _, size, _ in found),
        heavy_layers=len({heavy for *_, heavy in found if heavy}),
    )


def measure_disk(image_of_cell: dict[str, str]) -> ImagesDisk | None:
    """``disk_usage`` of a run's cell images (cell id -> image tag) on this node's engine; None when the run has
    none here, or the engine cannot say (never an error of the run)."""
    by_tag: dict[str, list[str]] = {}
    for cell_id, tag in image_of_cell.items():
        if tag:
            by_tag.setdefault(tag, []).append(cell_id)
    if not by_tag:
        return None
    try:
        return disk_usage(engine.connect(timeout=30), by_tag)
    except Exception:  # a report of sizes is no reason to fail a run
        return None


def _provision(
    client: docker.DockerClient,
    spec: ImageSpec,
    below: str,
    tag: str,
    log: Path | None,
    labels: dict[str, str],
    base_id: str = "",
    requirements: list[str] | None = None,
    create: bool = True,
    role: str = "env",
) -> None:
    """One provisioning container over ``below`` (the base, or the heavy layer when not ``create``), committed as
    ``tag``: the venv made (``create``) and ``requirements`` installed into it."""
    with tempfile.TemporaryDirectory(prefix="matrix-run-provision-") as tmp:
        work = Path(tmp)
        wheels = [w for w in spec.wheelhouses if Path(w).is_dir()]  # another node may lack one: skipped there
        request: dict[str, object] = {
            "venv": VENV,
            "installer": spec.installer,
            "uv": UV_IN_CONTAINER,
            "create": create,
            "pip_args": list(spec.pip_args),
            "find_links": [f"{WHEELS_IN_CONTAINER}/{i}" for i in range(len(wheels))],
            "requirements": requirements if requirements is not None else [spec.pytest, *spec.extra, *spec.install],
        }
        (work / "provision.json").write_text(json.dumps(request))
        volumes = {
            str(work): {"bind": "/mr/in", "mode": "ro"},
            str(SIDE_DIR): {"bind": "/mr/side", "mode": "ro"},
        }
        for i, folder in enumerate(wheels):
            volumes[folder] = {"bind": f"{WHEELS_IN_CONTAINER}/{i}", "mode": "ro"}
        environment = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
        if spec.installer == "uv":
            uv = uv_binary()
            if uv is None:
                raise BuildFailed(
                    "image.installer is uv, but matrix-run's environment on this node has no uv executable: "
                    "pip install uv there, or set image.installer: pip"
                )
            volumes[uv] = {"bind": UV_IN_CONTAINER, "mode": "ro"}
            # copies, not links: the cache is another file system; no Python downloads, no progress bars in logs
            environment.update(UV_LINK_MODE="copy", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
        try:
            cache = cache_folder(spec.cache)
        except OSError as exc:
            cache = None
            _write_log(log, f"matrix-run: image.cache {spec.cache!r} cannot be used here ({exc}); building without\n")
        if cache is not None:
            volumes[str(cache)] = {"bind": CACHE_IN_CONTAINER, "mode": "rw"}
            environment.update(PIP_CACHE_DIR=f"{CACHE_IN_CONTAINER}/pip", UV_CACHE_DIR=f"{CACHE_IN_CONTAINER}/uv")
        else:
            environment.update(PIP_NO_CACHE_DIR="1", UV_NO_CACHE="1")
        if spec.ca_bundle:
            (work / "ca.crt").write_bytes(spec.ca_bundle)
            environment.update(PIP_CERT="/mr/in/ca.crt", SSL_CERT_FILE="/mr/in/ca.crt")
        changes = [
            f"ENV {PATH_ENV}",
            f"ENV VIRTUAL_ENV={VENV}",
            f"LABEL {engine.LABEL_ROLE}={role}",
            f"LABEL {LABEL_BASE_ID}={base_id}",
        ]
        if not create:
            changes.append(f"LABEL {LABEL_HEAVY}={below}")
        code, tail = _run_and_commit(
            client,
            below,
            ["python3", "/mr/side/provision.py", "/mr/in/provision.json"],
            volumes,
            environment,
            labels,
            tag,
            changes,
            log,
        )
        what = "the heavy layer's packages" if role == "heavy" else "the cell's dependencies"
        if code == UV_UNUSABLE:
            raise BuildFailed(
                f"installing {what} failed: uv does not run in the base image {spec.base} (a musl or old-glibc "
                "base?); set image.installer: pip",
                tail,
            )
        if code != 0:
            raise BuildFailed(f"installing {what} failed (exit {code})", tail)


def _run_and_commit(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    volumes: dict[str, dict[str, str]],
    env: dict[str, str],
    labels: dict[str, str],
    tag: str,
    changes: list[str],
    log: Path | None,
) -> tuple[int, str]:
    """Run one build step in a container of ``image``; on success commit it as ``tag``. (exit code, log tail).

    The container is removed on every path; the committed image does not keep the run's label.
    """
    import docker.errors

    container = _create(client, image, command, volumes, env, labels)
    try:
        container.start()
        code = int(container.wait().get("StatusCode", 1))
        text = container.logs().decode("utf-8", "replace")
        _write_log(log, text)
        if code == 0:
            repository, _, name = tag.partition(":")
            container.commit(
                repository=repository,
                tag=name,
                changes=[*changes, f'LABEL {engine.LABEL_RUN}=""', f'LABEL {engine.LABEL_OWNER}=""'],
            )
        return code, "\n".join(text.splitlines()[-25:])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@engine.api_call
def _create(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    volumes: dict[str, dict[str, str]],
    env: dict[str, str],
    labels: dict[str, str],
) -> docker.models.containers.Container:
    import docker.types

    # bind mounts, not ``volumes=``: docker-py would also declare them as image VOLUMEs, which a commit keeps
    mounts = [
        docker.types.Mount(target=v["bind"], source=host, type="bind", read_only=v.get("mode") == "ro")
        for host, v in volumes.items()
    ]
    return client.containers.create(
        image,
        command=command,
        mounts=mounts,
        environment=env,
        labels={**labels, engine.LABEL_ROLE: "provision"},
        detach=True,
    )


def base_ref(spec: ImageSpec) -> str:
    """The image a cell's dependency image is built on, as the node that built it tags it (a Dockerfile's build
    is tagged by the spec's digest: only the coordinator can build it, other nodes get it shipped)."""
    return f"matrix-run/base:{spec.digest[:20]}" if spec.dockerfile_text is not None else spec.base
