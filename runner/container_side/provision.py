"""Image provisioning, run once per image inside a container of the base image: venv + pip install.

Usage: python3 provision.py REQUEST.json, where the request holds {"venv", "pip_args", "requirements"}.
Values arrive as data in a file, never through a shell.
"""

import json
import subprocess
import sys


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
    run([sys.executable, "-m", "venv", venv])
    python = venv + "/bin/python"
    pip = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off"] + request["pip_args"]
    run(pip + ["--upgrade", "pip"])
    run(pip + request["requirements"])
    run([python, "-m", "pip", "list"])


if __name__ == "__main__":
    main()
