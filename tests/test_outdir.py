"""runner/outdir.py: --out is matrix-run's own folder, or refused; a second run on it stops at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import outdir
from runner.errors import UserError
from tests.conftest import ROOT


def test_a_new_folder_is_made_marked_and_locked(tmp_path: Path) -> None:
    folder = outdir.claim(tmp_path / "a" / "out", "run-1")
    try:
        assert (folder.path / outdir.MARKER).is_file()
        assert "run run-1" in (folder.path / outdir.LOCK).read_text()
    finally:
        folder.release()


def test_a_folder_with_someone_elses_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "build-2025.log").write_text("mine")
    (out / "images").mkdir()
    (out / "images" / "photo.jpg").write_bytes(b"\xff\xd8")

    with pytest.raises(UserError, match=r"did not write \(no \.matrix-run-out marker\); .* or --force"):
        outdir.claim(out, "run-1")

    assert (out / "logs" / "build-2025.log").read_text() == "mine"
    assert (out / "images" / "photo.jpg").exists()
    assert not (out / outdir.MARKER).exists()


def test_force_takes_a_foreign_folder_but_deletes_nothing_in_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    folder = outdir.claim(out, "run-1", force=True)
    folder.release()
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / outdir.MARKER).is_file()


def test_force_refuses_a_foreign_folder_holding_one_of_matrix_runs_output_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "build-2025.log").write_text("mine")

    with pytest.raises(UserError, match=r"logs exist\(s\) there and matrix-run did not make them"):
        outdir.claim(out, "run-1", force=True)

    assert (out / "logs" / "build-2025.log").read_text() == "mine"


def test_a_folder_matrix_run_made_is_reused_and_its_old_outputs_cleared(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outdir.claim(out, "run-1").release()
    (out / "logs" / "cell").mkdir(parents=True)
    (out / "logs" / "cell" / "shard-1of1.attempt1.log").write_text("old")
    (out / "results.json").write_text("{}")

    outdir.claim(out, "run-2").release()

    assert not (out / "logs").exists()
    assert not (out / "results.json").exists()


def test_an_output_name_that_is_a_symlink_is_unlinked_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    out = tmp_path / "out"
    outdir.claim(out, "run-1").release()
    (out / "logs").symlink_to(outside)

    outdir.claim(out, "run-2").release()

    assert not (out / "logs").exists()
    assert (outside / "precious").read_text() == "x"


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr", "~"])
def test_system_and_home_folders_are_refused_even_with_force(folder: str) -> None:
    with pytest.raises(UserError, match="system or home folder"):
        outdir.claim(Path(folder).expanduser(), "run-1", force=True)


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from runner import outdir\n"
        "outdir.claim(Path(sys.argv[1]), 'first-run')\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by run first-run \(pid {holder.pid}\)"):
            outdir.claim(out, "second-run")
    finally:
        holder.kill()
        holder.wait()
    outdir.claim(out, "third-run").release()  # the lock went with its process


def test_the_cli_refuses_a_foreign_out_folder_in_one_line(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"project: {project}\nmatrix: {{python: ['3.11']}}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"\xff")
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(matrix), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},  # refused before Docker is asked
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "no .matrix-run-out marker" in proc.stderr
    assert (out / "photo.jpg").exists()


def test_a_bug_in_matrix_run_exits_3_with_its_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    from runner import cli, config

    def broken(path: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(config, "load", broken)  # our own function, standing in for any bug of ours
    code = cli.main(["list", str(tmp_path / "m.yaml")])

    assert code == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "ZeroDivisionError: a bug" in err
    assert "internal error" in err
