"""``bnclaims list --experiments`` works anywhere: one line per experiment, or one experiment in full."""

from __future__ import annotations

import subprocess
import sys


def run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "bnclaims", "list", "--experiments", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_lists_names_with_one_line_descriptions_outside_a_project(tmp_path):
    out = run(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("bn-vs-layernorm ") and "layer norm" in line for line in lines)
    assert "param " not in out.stdout  # details only on request
    assert "details: bnclaims list --experiments NAME" in out.stdout


def test_one_experiment_in_full_and_a_typo_gets_did_you_mean(tmp_path):
    out = run(tmp_path, "bn-vs-layernorm")
    assert out.returncode == 0, out.stderr
    assert "param  batch_size: int = 32" in out.stdout and "metric " in out.stdout
    bad = run(tmp_path, "bn-vs-layrnorm")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("bnclaims: error: unknown experiment (found 'bn-vs-layrnorm'; "
                                  "did you mean 'bn-vs-layernorm'?)")
