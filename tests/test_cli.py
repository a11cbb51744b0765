"""The CLI's contract: output and exit codes (0 ok, 2 user error in one line, 1 bug with a traceback)."""
from __future__ import annotations

import json
from pathlib import Path


from tritonize.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("build", "validate", "serve", "check", "schema", "perf", "tune"):
        assert command in out


def test_schema_is_the_spec_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["models"]
    assert {"repository", "runtime", "container", "models", "ensembles"} <= set(schema["properties"])


def test_build_output(spec: Path, capsys):
    assert main(["build", str(spec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"✓ built 3 models into {spec.parent / 'out'} in ")
    assert main(["build", str(spec)]) == 0
    assert capsys.readouterr().out.strip() == f"✓ {spec.parent / 'out'} is up to date (inputs unchanged), skipped"


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["compile"]) == 2
    assert "No such command 'compile'" in capsys.readouterr().err


def test_unknown_runtime(spec: Path, capsys):
    assert main(["build", str(spec), "--runtime", "docker"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --runtime: unknown runtime 'docker' (fix: use one of: embedded, container)")


def test_validate_a_file_instead_of_a_directory(spec: Path, capsys):
    assert main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {spec}: not a directory (fix: pass the path of a model repository)"


def test_check_without_a_manifest(tmp_path: Path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no tritonize manifest" in err and "\n" not in err


def test_a_bug_gets_a_traceback_and_exit_1(spec: Path, capsys, monkeypatch):
    import tritonize.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tritonize.pipeline, "_compile", broken)
    assert main(["build", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "internal error in tritonize" in err
