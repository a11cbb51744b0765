"""Output safety of `tritonize build`: kill -9 at any point leaves a complete repository at the
output path, two builds of one output take turns, what killed builds leave is cleaned up, and a
damaged repository is caught by `validate` and rebuilt by `build`. Python-only specs keep these fast;
the kills hit real build subprocesses (paused at a named point by TRITONIZE_TEST_PAUSE_AT)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import tritonize
from specs import MODEL_PY, VALID
from tritonize import emit
from tritonize import manifest as manifest_file
from tritonize.cli import main
from tritonize.terminal import Terminal
from tritonize.triton.rules import check_repository

QUIET = Terminal(quiet=True)
CHANGED = "# rebuilt\n"


@pytest.fixture()
def project(tmp_path: Path, monkeypatch) -> Path:
    """A built repository `out` of the python-only spec, with pre.py since changed (so the next
    build writes a different repository), and a private temporary directory for work dirs."""
    (tmp_path / "pre.py").write_text(MODEL_PY)
    (tmp_path / "spec.yaml").write_text(VALID)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tritonize.build(tmp_path / "spec.yaml", terminal=QUIET)
    (tmp_path / "pre.py").write_text(MODEL_PY + CHANGED)
    return tmp_path


def _complete(out: Path) -> str:
    """Assert out is a whole repository (rules pass, every file is the one its manifest hashed);
    return which build it is from: 'old' or 'new'."""
    assert out.is_dir() and not out.is_symlink()
    assert check_repository(out) == []
    assert manifest_file.check_files(out, manifest_file.load(out)) == []
    return "new" if (out / "pre" / "1" / "model.py").read_text().endswith(CHANGED) else "old"


def _start_paused(project: Path, point: str, *args: str) -> subprocess.Popen:
    marker = project / f"paused-{point}"
    env = {**os.environ, "TRITONIZE_TEST_PAUSE_AT": point, "TRITONIZE_TEST_PAUSE_MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "tritonize", "build", str(project / "spec.yaml"), *args],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, f"the build never reached {point}"
        time.sleep(0.05)
    return process


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    if process.stderr:
        process.stderr.close()


def _leftovers(project: Path) -> list[str]:
    names = [p.name for p in project.iterdir() if p.name.startswith(".out.")]
    return sorted(names + [p.name for p in (project / "tmp").iterdir()])


# Where the kill lands -> whose repository the path then holds.
POINTS = {"compile": "old", "staging": "old", "swap": "old", "swapped": "new"}


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_leaves_a_complete_repository(project: Path, point: str):
    _kill(_start_paused(project, point))
    out = project / "out"
    assert _complete(out) == POINTS[point]
    assert _leftovers(project), "the killed build left nothing behind: the test did not kill where it meant to"
    # The next build cleans up what the killed one left, and writes the new repository.
    result = tritonize.build(project / "spec.yaml", terminal=QUIET)
    assert _complete(out) == "new"
    assert result.skipped == (point == "swapped")  # the swapped-in repository is the finished build
    assert _leftovers(project) == []


def test_a_second_build_fails_cleanly_naming_the_holder(project: Path, capsys):
    holder = _start_paused(project, "swap")
    try:
        assert main(["build", str(project / "spec.yaml"), "--lock-timeout", "0.5"]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and f"another build (pid {holder.pid})" in lines[-1]
        assert f"wait for pid {holder.pid} to finish" in lines[-1]
        assert [line for line in lines[:-1] if "waiting for another build" not in line] == []
    finally:
        _kill(holder)
    assert _complete(project / "out") == "old"


def test_a_second_build_waits_for_the_first(project: Path):
    holder = _start_paused(project, "swap")
    waiter = subprocess.Popen([sys.executable, "-m", "tritonize", "build", str(project / "spec.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiter.stderr is not None
        first = waiter.stderr.readline()
        assert f"waiting for another build of {project / 'out'} (pid {holder.pid}) to finish" in first
        assert waiter.poll() is None
    finally:
        _kill(holder)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert "built 3 models" in out
    assert _complete(project / "out") == "new"
    assert _leftovers(project) == []


@pytest.mark.parametrize("damage, problem", [
    (lambda out: (out / "pre" / "1" / "model.py").write_text("class TritonPythonModel:\n"), "changed since tritonize built it"),
    (lambda out: (out / "pre" / "1" / "model.py").unlink(), "missing (the manifest lists it)"),
    (lambda out: (out / "post" / "1" / "weights.bin").write_bytes(b"\0" * 8), "extra file (not in the manifest)"),
    (lambda out: shutil.rmtree(out / "post"), "model directory listed in the manifest is missing"),
    (lambda out: (out / "tritonize.manifest.json").write_text("{truncated"), "the manifest is not valid JSON"),
], ids=["changed", "deleted", "extra", "model-dir-deleted", "manifest-garbage"])
def test_damage_is_caught_by_validate_and_rebuilt_by_build(spec: Path, capsys, damage, problem: str):
    out = spec.parent / "out"
    tritonize.build(spec, terminal=QUIET)
    damage(out)
    assert main(["validate", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any(problem in line for line in lines), lines
    assert main(["build", str(spec)]) == 0
    captured = capsys.readouterr()
    assert "built 3 models" in captured.out  # rebuilt, not "up to date"
    if "manifest" not in problem:  # (an unreadable manifest is simply rebuilt)
        assert "built file(s) differ from the manifest" in captured.err and "rebuilding" in captured.err
    assert main(["validate", str(out)]) == 0
    assert tritonize.build(spec, terminal=QUIET).skipped  # whole again: the next one skips


def test_the_fallback_swap_is_recovered_after_a_kill_between_its_renames(project: Path, monkeypatch):
    out = project / "out"
    # A kill between the fallback's two renames: the previous repository moved aside, none at the path.
    os.rename(out, project / ".out.old-999999-abcdefgh")
    (project / ".out.staging-999999-abcdefgh").mkdir()
    assert emit.clean_leftovers(out)[0].name == ".out.staging-999999-abcdefgh"
    assert _complete(out) == "old" and _leftovers(project) == []
    # And the fallback itself (filesystems without RENAME_EXCHANGE) still swaps.
    monkeypatch.setattr(emit, "_exchange", lambda a, b: False)
    tritonize.build(project / "spec.yaml", terminal=QUIET)
    assert _complete(out) == "new" and _leftovers(project) == []


def test_only_work_directories_of_dead_builds_are_removed(project: Path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = project / "tmp" / f"tritonize-work-{finished.stdout.strip()}-abcdefgh"
    dead.mkdir()  # killed before it made its owner lock: judged by its pid
    alive_unlocked = project / "tmp" / f"tritonize-work-{os.getpid()}-abcdefgh"
    alive_unlocked.mkdir()
    foreign = project / "tmp" / "tritonize-work-nopid"  # an older tritonize's: nobody can tell, kept
    foreign.mkdir()
    with emit.work_directory() as live:
        removed = emit.clean_leftovers(project / "out")
        assert live.is_dir()
    assert removed == [dead]
    assert alive_unlocked.is_dir() and foreign.is_dir() and not live.exists()


def test_replace_repository_rehashes_what_it_changes(spec: Path, tmp_path: Path):
    out = spec.parent / "out"
    built = tritonize.build(spec, terminal=QUIET)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "rank0.engine").write_bytes(b"engine")
    assert built.manifest is not None
    with emit.output_lock(out):
        emit.replace_repository(out, built.manifest, add={"post/1/engine": engine})
    assert manifest_file.load(out).models["post"].files["1/engine/rank0.engine"].startswith("sha256:")
    assert _complete(out) == "old"


def test_no_space_left_on_device_is_one_line(tmp_path: Path):
    """A real full disk: a 256 KiB tmpfs in a user+mount namespace (skipped where unprivileged
    namespaces are off). The first build fits; a bigger model.py does not: exit 2, one line, and
    the previous repository is still whole."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("unprivileged user and mount namespaces are not available")
    (tmp_path / "pre.py").write_text(MODEL_PY)
    (tmp_path / "spec.yaml").write_text(VALID)
    disk = tmp_path / "disk"
    disk.mkdir()
    tritonize_cli = f"{sys.executable} -m tritonize"
    script = f"""
        set -u
        mount -t tmpfs -o size=256k tmpfs {disk}
        {tritonize_cli} build {tmp_path / 'spec.yaml'} -o {disk / 'out'} > /dev/null || exit 10
        python3 -c "open('{tmp_path / 'pre.py'}', 'a').write('#' * 400000 + chr(10))"
        {tritonize_cli} build {tmp_path / 'spec.yaml'} -o {disk / 'out'} 2> {tmp_path / 'err.txt'} > /dev/null
        echo "build=$?"
        {tritonize_cli} validate {disk / 'out'} > /dev/null
        echo "validate=$?"
        ls -a {disk}
    """
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "build=2" in done.stdout and "validate=0" in done.stdout, done.stdout
    err = (tmp_path / "err.txt").read_text().strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "free space on that filesystem" in err[0], err
    assert "Traceback" not in err[0]
    assert done.stdout.split()[-3:] == [".", "..", "out"]  # no staging directory left on the full disk
