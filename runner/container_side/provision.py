"""Image provisioning, run once per image layer inside a container of the image below it: venv + install.

Usage: python3 provision.py REQUEST.json, where the request holds {"venv", "pip_args", "requirements"} and may hold
"installer" ("pip", the default, or "uv"), "uv" (the uv executable, mounted read-only), "find_links" (wheel
folders), "create" (false: install into the venv the image below already holds; a cell layer over its heavy
layer) and "inherit" (the host executor's site folders). Values arrive as data in a file, never through a shell.
"""

import json
import subprocess
import sys

UV_UNUSABLE = 251  # the uv executable does not run in this image (a musl base, an old glibc): images.py says so


def run(argv):
    print("+ " + " ".join(argv), flush=True)
    code = subprocess.call(argv)
    if code != 0:
        print("matrix-run: command failed with exit code %d" % code, flush=True)
        sys.exit(code)


def main():
    with open(sys.argv[1]) as fh:
        request = json.load(fh)
    venv = request["venv"]
    create = request.get("create", True)
    if create:
        run([sys.executable, "-m", "venv", venv])
    python = venv + "/bin/python"
    if request.get("inherit"):  # the host executor's environment sees these site folders after its own
        purelib = [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        site_dir = subprocess.check_output(purelib, universal_newlines=True).strip()
        with open(site_dir + "/matrix-run-inherited.pth", "w") as fh:
            fh.write("".join("import site; site.addsitedir(%r)\n" % folder for folder in request["inherit"]))
        print("+ inherits " + " ".join(request["inherit"]), flush=True)
    find_links = []
    for folder in request.get("find_links", []):
        find_links += ["--find-links", folder]
    if request.get("installer", "pip") == "uv":
        install_with_uv(request, python, create, find_links)
        return
    pip = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off"] + find_links + request["pip_args"]
    if create:
        run(pip + ["--upgrade", "pip"])
    run(pip + request["requirements"])
    run([python, "-m", "pip", "list"])


def install_with_uv(request, python, create, find_links):
    """uv pip install into the venv, bytecode compiled (uv compiles only what is not compiled yet, so a cell layer
    leaves its heavy layer's files alone). The venv keeps pip, upgraded as the pip installer would, for the source
    layer's project install."""
    uv = request["uv"]
    try:
        works = subprocess.call([uv, "--version"]) == 0
    except OSError as exc:
        print("matrix-run: %s: %s" % (uv, exc), flush=True)
        works = False
    if not works:
        print("matrix-run: uv does not run in this image (a musl or old-glibc base?)", flush=True)
        sys.exit(UV_UNUSABLE)
    argv = [uv, "pip", "install", "--python", python, "--compile-bytecode"] + find_links + request["pip_args"]
    if create:
        argv += ["--upgrade-package", "pip", "pip"]
    run(argv + request["requirements"])
    run([uv, "pip", "list", "--python", python])


if __name__ == "__main__":
    main()
