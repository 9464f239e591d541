"""Project configuration: ``[tool.bnclaims]`` in the nearest pyproject.toml (bnclaims.config), read by the
CLI and the plugin alike; and the test project in tests/project/, run as a user runs theirs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnclaims import config
from bnclaims.cli import _apply_project, main, make_parser
from bnclaims.errors import UserError

PROJECT = Path(__file__).resolve().parent / "project"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # add_import_paths changes it: undone after the test


# --------------------------------------------------------------------------- the test project, for real

def user_env() -> dict:
    """A user's shell: nothing on PYTHONPATH, no $BNCLAIMS_EXPERIMENTS, the default cache location."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "BNCLAIMS_EXPERIMENTS", "XDG_CACHE_HOME") and not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def console_script(name: str) -> str:
    """The installed console script (not ``python -m``, which would put the working directory on sys.path)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"the {name!r} console script is not installed beside {sys.executable}")
    return found


def test_the_test_project_runs_with_plain_bnclaims_run_and_plain_pytest(tmp_path):
    project = tmp_path / "toyproject"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", ".bnclaims-cache", ".pytest_cache"))
    env = user_env()

    run = subprocess.run([console_script("bnclaims"), "run"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bn-zeroes-the-batch-mean" in run.stdout and "affine-mean-is-beta" in run.stdout
    assert "2 claims: 2 supported" in run.stdout
    assert (project / ".bnclaims-cache").is_dir()  # [tool.bnclaims] cache-dir, relative to the pyproject.toml

    tests = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "myclaims/bn-zeroes-the-batch-mean.yaml::bn-zeroes-the-batch-mean PASSED (supported)" in tests.stdout
    assert "myclaims/affine-mean-is-beta.yaml::affine-mean-is-beta PASSED (supported)" in tests.stdout
    assert "tests/test_experiments.py::test_the_experiment_returns_its_metrics PASSED" in tests.stdout
    assert "8 seed runs (8 from cache)" in tests.stdout  # the CLI's cache: [tool.bnclaims] cache-dir

    plain = subprocess.run([console_script("pytest"), "-q", "-p", "no:cacheprovider"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "3 passed" in plain.stdout

    # `bnclaims new` says what to run next, and that works as printed, from a subfolder too
    for cwd in (project, project / "src"):
        new = subprocess.run([console_script("bnclaims"), "new", f"draft-from-{cwd.name}"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=120)
        assert new.returncode == 0, new.stderr
        assert (project / "myclaims" / f"draft-from-{cwd.name}.yaml").is_file()
        command = shlex.split(new.stdout.split("then run: ", 1)[1])
        assert command[:2] == ["bnclaims", "check"]
        check = subprocess.run([console_script("bnclaims"), *command[1:]], cwd=cwd, env=env, capture_output=True,
                               text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "1 valid, 0 invalid claim file(s); 1 draft" in check.stdout


def test_the_root_test_run_does_not_collect_the_test_project(pytester):
    conftest = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
    assert 'collect_ignore = ["project"]' in conftest


# --------------------------------------------------------------------------- reading the table

def test_no_pyproject_or_no_table_is_an_empty_config(tmp_path, clean_env):
    if config.find_pyproject(tmp_path) is None:  # nothing above the temporary directory
        assert config.load(tmp_path) == config.ProjectConfig()
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    project = config.load(tmp_path)
    assert project.file == tmp_path / "pyproject.toml"
    assert (project.claims, project.experiments, project.paths, project.cache_dir, project.jobs) == \
        (None, None, (), None, None)


def test_keys_and_paths_relative_to_the_pyproject_folder(tmp_path, monkeypatch, clean_env):
    (tmp_path / "src").mkdir()
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    write(tmp_path / "pyproject.toml", """
[tool.bnclaims]
claims = "myclaims"
experiments = ["myproj.experiments", "myproj.more"]
paths = ["src", "."]
cache-dir = "var/cache"
jobs = 3
""")
    monkeypatch.chdir(tmp_path / "sub" / "deeper")  # found from a subfolder, paths still from the file's folder
    project = config.load()
    assert project.file == tmp_path / "pyproject.toml"
    assert project.claims.resolve() == (tmp_path / "myclaims").resolve()
    assert project.experiments == ("myproj.experiments", "myproj.more")
    assert project.paths == (tmp_path / "src", tmp_path)
    assert project.cache_dir == tmp_path / "var" / "cache"
    assert project.jobs == 3
    monkeypatch.chdir(tmp_path)
    assert config.load().claims == Path("myclaims")  # shown relative to the working directory when inside it


def test_the_nearest_pyproject_wins_and_paths_default_to_its_folder(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "pyproject.toml", "[tool.bnclaims]\njobs = 2\n")
    write(tmp_path / "inner" / "pyproject.toml", "[tool.bnclaims]\nclaims = 'c'\n")
    inner = config.load(tmp_path / "inner")
    assert inner.jobs is None and inner.paths == (tmp_path / "inner",)  # default paths = ["."]
    config.add_import_paths(inner)
    config.add_import_paths(inner)
    assert sys.path.count(str(tmp_path / "inner")) == 1 and sys.path[0] == str(tmp_path / "inner")
    assert config.load(tmp_path).jobs == 2


def test_a_paths_entry_makes_a_module_importable_by_the_cli(tmp_path, monkeypatch, capsys, clean_env):
    write(tmp_path / "lib" / "pathprobe_experiments.py", "raise RuntimeError('imported from lib/')\n")
    write(tmp_path / "pyproject.toml", "[tool.bnclaims]\nexperiments = ['pathprobe_experiments']\npaths = ['lib']\n")
    (tmp_path / "claims").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    # found on the path and imported (its own error), not "No module named"
    assert "(RuntimeError: imported from lib/)" in capsys.readouterr().err


# --------------------------------------------------------------------------- precedence

def test_experiments_precedence_command_line_env_table_ini(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "pyproject.toml", """
[tool.bnclaims]
experiments = ["from_table"]

[tool.pytest.ini_options]
bnclaims_experiments = ["from_ini"]
""")
    project = config.load(tmp_path)
    modules, source = config.experiment_modules([], project)
    assert modules == ("from_table",) and source.endswith("pyproject.toml [tool.bnclaims] experiments")
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "from_env, other_env")
    assert config.experiment_modules([], project) == (("from_env", "other_env"), "$BNCLAIMS_EXPERIMENTS")
    assert config.experiment_modules(["from_cli"], project) == (("from_cli",), "command line")
    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS")
    write(tmp_path / "pyproject.toml", "[tool.pytest.ini_options]\nbnclaims_experiments = ['from_ini']\n")
    project = config.load(tmp_path)
    assert config.experiment_modules([], project) == (("from_ini",), "bnclaims_experiments")  # the alias, last
    assert config.experiment_modules([], project, ini=["plugin_ini"])[0] == ("plugin_ini",)  # the plugin's getini


def _cli_choice(args: list[str], capsys) -> str:
    """Which experiments module the CLI imports: each candidate is missing, so the error names it."""
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.split("cannot import experiments module '", 1)[1].split("'", 1)[0]


def test_the_cli_follows_the_precedence(tmp_path, monkeypatch, capsys, clean_env):
    (tmp_path / "claims").mkdir()
    write(tmp_path / "pyproject.toml", "[tool.pytest.ini_options]\nbnclaims_experiments = ['missing_ini']\n")
    monkeypatch.chdir(tmp_path)
    assert _cli_choice([], capsys) == "missing_ini"
    write(tmp_path / "pyproject.toml", "[tool.bnclaims]\nexperiments = ['missing_table']\n"
                                       "[tool.pytest.ini_options]\nbnclaims_experiments = ['missing_ini']\n")
    assert _cli_choice([], capsys) == "missing_table"
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "missing_env")
    assert _cli_choice([], capsys) == "missing_env"
    assert _cli_choice(["--experiments-module", "missing_cli"], capsys) == "missing_cli"


def test_the_cli_takes_claims_cache_and_jobs_from_the_table_unless_given(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "pyproject.toml", "[tool.bnclaims]\nclaims = 'mine'\ncache-dir = 'c'\njobs = 1\n")
    monkeypatch.chdir(tmp_path)
    args = make_parser().parse_args(["run"])
    _apply_project(args)
    assert (args.claims, args.cache_dir, args.jobs) == (Path("mine"), tmp_path / "c", 1)
    args = make_parser().parse_args(["run", "--claims", "other", "--cache-dir", "d", "--jobs", "2"])
    _apply_project(args)
    assert (args.claims, args.cache_dir, args.jobs) == (Path("other"), Path("d"), 2)
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    args = make_parser().parse_args(["build"])
    _apply_project(args)
    assert (args.claims, args.cache_dir, args.jobs) == (Path("claims"), None, None)  # the defaults


def test_the_plugin_follows_the_precedence(pytester, monkeypatch, clean_env):
    (pytester.path / "pyproject.toml").write_text(
        "[tool.bnclaims]\nexperiments = ['missing_table']\n", encoding="utf-8")
    pytester.makeini("[pytest]\nbnclaims_experiments = missing_ini\n")

    def chosen(*args: str) -> str:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        return result.stderr.str().split("cannot import experiments module '", 1)[1].split("'", 1)[0]

    assert chosen() == "missing_table"  # [tool.bnclaims] beats the ini key
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "missing_env")
    assert chosen() == "missing_env"
    assert chosen("--bnclaims-experiments", "missing_cli") == "missing_cli"
    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS")
    (pytester.path / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    assert chosen() == "missing_ini"  # the alias still works alone


# --------------------------------------------------------------------------- mistakes: one line each

@pytest.mark.parametrize("body, message", [
    ("cache_dir = 'c'", "pyproject.toml:3: unknown key in [tool.bnclaims] (found 'cache_dir'; "
                        "did you mean 'cache-dir'?); keys: claims, experiments, paths, cache-dir, jobs"),
    ("experiment = ['m']", "pyproject.toml:3: unknown key in [tool.bnclaims] (found 'experiment'; "
                           "did you mean 'experiments'?)"),
    ("jobs = '4'", "pyproject.toml:3: [tool.bnclaims] jobs must be an integer, 1 or more (found a string '4')"),
    ("jobs = true", "pyproject.toml:3: [tool.bnclaims] jobs must be an integer, 1 or more (found a boolean True)"),
    ("jobs = 0", "pyproject.toml:3: [tool.bnclaims] jobs must be an integer, 1 or more (found an integer 0)"),
    ("experiments = 'm'", "pyproject.toml:3: [tool.bnclaims] experiments must be a list of module names "
                          "(found a string 'm')"),
    ("experiments = ['my-proj']", "pyproject.toml:3: [tool.bnclaims] experiments must be a list of module names "
                                  "(found 'my-proj', not a module name)"),
    ("claims = 3", "pyproject.toml:3: [tool.bnclaims] claims must be a string"),
    ("paths = ['nope']", "pyproject.toml:3: [tool.bnclaims] paths: no such directory 'nope'"),
    ("'jobs' = 1\n[tool.bnclaims.extra]", "pyproject.toml:4: unknown key in [tool.bnclaims] (found 'extra'"),
])
def test_a_bad_table_is_one_line_naming_file_line_and_key(tmp_path, monkeypatch, capsys, clean_env, body, message):
    write(tmp_path / "pyproject.toml", f"# a project\n[tool.bnclaims]\n{body}\n")
    (tmp_path / "claims").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        config.load()
    assert message in str(e.value) and "\n" not in str(e.value)
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert err == f"bnclaims: error: {e.value}\n"


def test_invalid_toml_and_a_table_that_is_not_one(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "pyproject.toml", "[tool.bnclaims\n")
    with pytest.raises(UserError, match=r"^pyproject.toml: invalid TOML \(.*line 1.*\)$"):
        monkeypatch.chdir(tmp_path)
        config.load()
    write(tmp_path / "pyproject.toml", "[tool]\nbnclaims = 3\n")
    with pytest.raises(UserError, match=r"^pyproject.toml: \[tool.bnclaims\] must be a table \(found an integer 3\)$"):
        config.load()


def test_the_plugin_reports_a_bad_key_as_a_usage_error(pytester, clean_env):
    (pytester.path / "pyproject.toml").write_text("[tool.bnclaims]\ncache_dir = 'c'\n", encoding="utf-8")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: bnclaims: pyproject.toml:2: unknown key in [tool.bnclaims] (found 'cache_dir'; did you mean "
            "'cache-dir'?); keys: claims, experiments, paths, cache-dir, jobs") in result.stderr.lines
    assert "Traceback" not in result.stderr.str()


def test_jobs_from_the_table_are_bounded_as_the_flag_is(tmp_path, monkeypatch, capsys, clean_env):
    write(tmp_path / "pyproject.toml", "[tool.bnclaims]\njobs = 100000\n")
    (tmp_path / "claims").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnclaims: error: pyproject.toml [tool.bnclaims] jobs must be 1..") and "(found 100000)" in err


def test_the_readme_table_is_valid(tmp_path, monkeypatch, clean_env):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in readme.split("```toml\n")[1:] if "[tool.bnclaims]" in b.split("```")[0]]
    assert blocks, "the README shows no [tool.bnclaims] table"
    for block in blocks:
        write(tmp_path / "pyproject.toml", block.split("```")[0])
        (tmp_path / "src").mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path)
        project = config.load()
        assert project.keys == set(config.KEYS)  # shows every key
