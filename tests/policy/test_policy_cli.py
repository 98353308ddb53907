"""`plangate lint`: every output format and every exit code, in-process and once as a real process."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plangate.cli import main

PLANS = Path(__file__).resolve().parent / "plans"
ERRORS = PLANS / "nondeterministic.yaml"           # one error
WARNINGS = PLANS / "unhandled-payment-failure.yaml"  # one warning, no error
TEXT_LINE = re.compile(r"(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<code>[a-z0-9-]+) (?P<sev>error|warning): .+")
GITHUB_LINE = re.compile(r"::(?P<level>error|warning) file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),"
                         r"title=(?P<code>[a-z0-9-]+)::.+")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _unreadable(kind: str, where: Path) -> Path:
    if kind == "missing":
        return where / "missing.yaml"
    if kind == "directory":
        return where
    path = where / "latin1.yaml"
    path.write_bytes("description: Gr\u00fc\u00dfe\n".encode("latin-1"))
    return path


class TestTextFormat:
    def test_one_line_per_finding_with_location_code_and_severity(self, capsys):
        code, out, err = run(capsys, "lint", str(ERRORS))
        (line,) = out.splitlines()
        match = TEXT_LINE.fullmatch(line)
        assert match and match["file"] == str(ERRORS)
        assert (match["line"], match["code"], match["sev"]) == ("19", "nondeterministic", "error")
        assert "1 error(s), 0 warning(s)" in err

    def test_clean_plan_prints_no_finding(self, capsys, shipped_plan):
        code, out, err = run(capsys, "lint", str(shipped_plan))
        assert (code, out) == (0, "")
        assert "clean" in err

    def test_findings_of_several_files_in_file_order(self, capsys):
        code, out, _ = run(capsys, "lint", str(WARNINGS), str(ERRORS))
        files = [TEXT_LINE.fullmatch(line)["file"] for line in out.splitlines()]
        assert files == sorted([str(ERRORS), str(WARNINGS)])


class TestJsonFormat:
    def test_a_list_of_findings(self, capsys):
        code, out, _ = run(capsys, "lint", "--format", "json", str(ERRORS), str(WARNINGS))
        findings = json.loads(out)
        assert [(f["code"], f["severity"], f["line"]) for f in findings] == [
            ("nondeterministic", "error", 19), ("unhandled-payment-failure", "warning", 8)]
        assert set(findings[0]) == {"code", "severity", "message", "file", "line", "column", "path"}
        assert findings[0]["path"] == "transitions[1]"

    def test_clean_plan_is_an_empty_list(self, capsys, shipped_plan):
        code, out, err = run(capsys, "lint", "--format", "json", str(shipped_plan))
        assert (code, json.loads(out), err) == (0, [], "")


class TestGithubFormat:
    def test_workflow_annotations(self, capsys):
        code, out, _ = run(capsys, "lint", "--format", "github", str(ERRORS), str(WARNINGS))
        matches = [GITHUB_LINE.fullmatch(line) for line in out.splitlines()]
        assert all(matches), out
        assert [(m["level"], m["line"], m["code"]) for m in matches] == [
            ("error", "19", "nondeterministic"), ("warning", "8", "unhandled-payment-failure")]
        assert matches[0]["file"] == str(ERRORS)

    def test_commas_and_colons_in_properties_are_escaped(self, capsys, tmp_path):
        odd = tmp_path / "a,b:c.yaml"
        odd.write_text("version: 2\n", encoding="utf-8")
        _, out, _ = run(capsys, "lint", "--format", "github", str(odd))
        assert "a%2Cb%3Ac.yaml,line=" in out.splitlines()[0]


class TestExitCodes:
    def test_0_when_clean(self, capsys, shipped_plan):
        assert run(capsys, "lint", str(shipped_plan))[0] == 0

    def test_default_file_is_plans_yaml(self, capsys, in_repo):
        assert run(capsys, "lint")[0] == 0

    def test_1_on_errors(self, capsys):
        assert run(capsys, "lint", str(ERRORS))[0] == 1

    def test_0_on_warnings_only(self, capsys):
        assert run(capsys, "lint", str(WARNINGS))[0] == 0

    def test_1_on_warnings_with_strict(self, capsys):
        assert run(capsys, "lint", "--strict", str(WARNINGS))[0] == 1

    @pytest.mark.parametrize("kind, says", [
        ("missing", "no such file"), ("directory", "is a directory"), ("latin-1", "not UTF-8"),
    ])
    def test_2_with_one_line_on_io_problems(self, capsys, tmp_path, kind, says):
        code, out, err = run(capsys, "lint", str(_unreadable(kind, tmp_path)))
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1 and says in err and "Traceback" not in err

    def test_2_when_any_file_is_missing(self, capsys, shipped_plan, tmp_path):
        assert run(capsys, "lint", str(shipped_plan), str(tmp_path / "gone.yaml"))[0] == 2

    @pytest.mark.parametrize("argv", [
        ["lint", "--format", "xml"], ["lint", "--no-such-option"], [], ["no-such-command"],
    ], ids=["bad-format", "bad-option", "no-command", "bad-command"])
    def test_2_on_bad_usage(self, capsys, argv):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err


class TestRealProcess:
    """Once through the installed console script, as CI runs it."""

    @pytest.fixture
    def plangate(self) -> Path:
        script = Path(sys.executable).parent / "plangate"
        if not script.exists():
            pytest.skip("the plangate console script is not installed next to this interpreter")
        return script

    def test_errors_exit_1_with_json(self, plangate):
        done = subprocess.run([plangate, "lint", "--format", "json", str(ERRORS)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert [f["code"] for f in json.loads(done.stdout)] == ["nondeterministic"]

    def test_clean_exits_0(self, plangate, repo):
        done = subprocess.run([plangate, "lint", "--strict"], cwd=repo, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, "")

    @pytest.mark.parametrize("argv", [["graph", "--format", "dot"], ["graph"], ["explain"], ["lint", "--format", "json"],
                                      ["--help"]])
    def test_a_closed_pipe_ends_it_without_a_traceback(self, plangate, repo, argv):
        """`plangate graph --format dot plans.yaml | head -1`: the reader is gone before the output is written."""
        proc = subprocess.Popen([plangate, *argv, *(["plans.yaml"] if argv[0] != "--help" else [])], cwd=repo,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) in (0, 1) and err == ""

    def test_missing_file_exits_2_without_traceback(self, plangate, tmp_path):
        done = subprocess.run([plangate, "lint", str(tmp_path / "nope.yaml")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip() == f"plangate lint: {tmp_path / 'nope.yaml'}: no such file"
