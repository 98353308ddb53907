"""An installed plangate (a wheel, not this checkout) has every file its code reads at run time, installs one
import name (`plangate`), and runs the plan tools with the core dependencies alone.

The product's CI installs plangate to run `plangate lint`; `make run` and `make test` use an editable
install, which reads everything from the checkout and so cannot show a file missing from the wheel.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository's folders and where they install (pyproject.toml's package-dir).
INSTALLED_AS = {"plangate/": "plangate/", "policy/": "plangate/policy/", "engine/": "plangate/engine/",
                "server/": "plangate/server/", "schema/": "plangate/schema/"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tracked files: a checkout's build/ and *.egg-info/ leftovers feed setuptools
    # files that pyproject.toml no longer (or not yet) names.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    found = list(out.glob("plangate-*.whl"))
    assert len(found) == 1, found
    return found[0]


def _source_files() -> set[str]:
    tracked = subprocess.run(["git", "ls-files", *INSTALLED_AS], cwd=ROOT, capture_output=True, text=True,
                             check=True)
    names = {name for name in tracked.stdout.split() if "/__pycache__/" not in name}
    return {next((to + name[len(src):] for src, to in INSTALLED_AS.items() if name.startswith(src)), name)
            for name in names}


def test_the_wheel_holds_every_file_of_the_packages(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = set(z.namelist())
    missing = sorted(_source_files() - inside)
    assert not missing, f"files of the packages missing from the wheel (pyproject.toml package-data): {missing}"


def test_the_wheel_installs_one_import_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist() if ".dist-info/" not in name}
        top_level = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/top_level.txt"))
    assert tops == {"plangate"}
    assert top_level.split() == ["plangate"]


def test_an_installed_plangate_lints_and_migrates_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    plan = tmp_path / "plans.yaml"
    plan.write_text((ROOT / "plans.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    # The installed packages first on the path (this venv's editable install would otherwise find the checkout).
    run = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import plangate.policy, plangate.server; "
           "assert plangate.policy.__file__.startswith(sys.path[0]), plangate.policy.__file__; "
           "from plangate.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {"PATH": "/usr/bin:/bin", "PLANGATE_PLANS": str(plan), "PLANGATE_DATABASE": str(tmp_path / "g.sqlite3")}
    for argv in (["lint", str(plan)], ["migrate", "--env-file", ""]):
        done = subprocess.run([sys.executable, "-c", run, str(target), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    assert (tmp_path / "g.sqlite3").stat().st_size > 0


def test_the_core_install_runs_the_plan_tools_without_the_gate(wheel, tmp_path):
    """`pip install plangate` (no extras), as a product's CI or the pre-commit hook does: the plan tools work and
    nothing of the gate's stack is installed."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    for module in ("aiohttp", "stripe", "asyncpg", "uvloop"):
        probe = subprocess.run([str(env_dir / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} came with the core install"
    shutil.copy(ROOT / "plans.yaml", tmp_path / "plans.yaml")
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    for argv in (["lint", "--strict", "plans.yaml"], ["explain", "plans.yaml"], ["graph", "plans.yaml"], ["test"],
                 ["--version"]):
        done = subprocess.run([str(env_dir / "bin" / "plangate"), *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    served = subprocess.run([str(env_dir / "bin" / "plangate"), "serve"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert served.returncode == 2 and "plangate[server]" in served.stderr, served.stderr
