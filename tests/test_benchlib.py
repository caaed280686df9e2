"""The benchmarks' side-by-side helpers (benchmarks/benchlib.py): which package a child runs, and
how per-round ratios become a verdict. No timing is asserted here: speed belongs in benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchlib  # noqa: E402
from benchlib import Ratios, Side  # noqa: E402

needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs this repository's git history"
)


def head_file(path: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


@needs_git
def test_baseline_tree_exports_the_commits_package_once(tmp_path: Path) -> None:
    tree = benchlib.baseline_tree("HEAD", cache=tmp_path)
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert tree == tmp_path / f"bench-baseline-{full[:12]}"
    assert (tree / "esj_provision" / "cli" / "__init__.py").read_bytes() == head_file("esj_provision/cli/__init__.py")
    assert not (tree / "tests").exists()  # the package only
    marker = tree / "esj_provision" / "marker"
    marker.write_text("kept")
    assert benchlib.baseline_tree(full, cache=tmp_path) == tree  # the same commit by another name
    assert marker.read_text() == "kept"  # not exported again
    assert [p.name for p in tmp_path.iterdir()] == [tree.name]  # no temporary directory left behind


@needs_git
def test_baseline_tree_replaces_a_half_export(tmp_path: Path) -> None:
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    half = tmp_path / f"bench-baseline-{full[:12]}" / "esj_provision"
    half.mkdir(parents=True)  # an export cut short: no __init__.py
    with pytest.raises(SystemExit, match="incomplete export; remove it"):
        benchlib.baseline_tree("HEAD", cache=tmp_path)  # neither trusts it nor mixes into it
    assert [p.name for p in tmp_path.iterdir()] == [half.parent.name]  # its own temporary tree removed
    shutil.rmtree(half.parent)
    assert (benchlib.baseline_tree("HEAD", cache=tmp_path) / "esj_provision" / "__init__.py").exists()


@needs_git
def test_unknown_baseline_commit_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--baseline no-such-commit: no such commit"):
        benchlib.baseline_tree("no-such-commit", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_git
def test_side_check_knows_which_package_the_child_imported(tmp_path: Path) -> None:
    before = Side("before", benchlib.baseline_tree("HEAD", cache=tmp_path / "cache"))
    now = Side("now", None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = benchlib.clean_env(str(tmp_path / "pycache"))
    before.check(env, scratch)
    now.check(env, scratch)
    assert before.env(env)["PYTHONPATH"] == str(before.tree)
    assert "PYTHONPATH" not in now.env({**env, "PYTHONPATH": str(before.tree)})
    # From the repository's root, `python -m`/`-c` put the working directory first on sys.path:
    # the child would run this tree whatever PYTHONPATH says, and the check must stop it.
    with pytest.raises(SystemExit, match="before: the child imported"):
        before.check(env, ROOT)
    empty = Side("empty", tmp_path / "nothing-here")
    with pytest.raises(SystemExit, match="empty: the child imported"):
        empty.check(env, scratch)


def test_both_sides_run_as_python_dash_m() -> None:
    assert Side("now", None).argv("--help") == [sys.executable, "-m", "esj_provision", "--help"]


def test_alternate_runs_before_then_now_in_each_round() -> None:
    seen: list[str] = []
    before, now = Side("before", Path("/b")), Side("now", None)

    def run(side: Side) -> str:
        seen.append(side.label)
        return f"{side.label}{len(seen)}"

    assert benchlib.alternate(3, run, before, now) == [("before1", "now2"), ("before3", "now4"), ("before5", "now6")]
    assert seen == ["before", "now"] * 3


def test_ratios_are_now_over_before_per_round() -> None:
    r = Ratios.of([(100.0, 110.0), (200.0, 180.0), (50.0, 50.0)])
    assert r.values == pytest.approx((1.1, 0.9, 1.0))
    assert (r.median, r.low, r.high) == pytest.approx((1.0, 0.9, 1.1))


@pytest.mark.parametrize("pairs", [[], [(0.0, 1.0)], [(1.0, 1.0), (-1.0, 2.0)]])
def test_ratios_refuse_no_rounds_or_a_non_positive_before(pairs: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match="positive 'before'"):
        Ratios.of(pairs)


def test_sign_test() -> None:
    assert Ratios((1.1,) * 6).sign_p() == pytest.approx(2 / 64)
    assert Ratios((0.9,) * 5).sign_p() == pytest.approx(2 / 32)
    assert Ratios((1.1, 0.9) * 4).sign_p() == 1.0
    assert Ratios((1.0, 1.0)).sign_p() == 1.0  # ties say nothing
    assert Ratios((1.2,) * 9 + (0.9,)).sign_p() == pytest.approx(2 * 11 / 1024)


def test_verdicts() -> None:
    assert Ratios((1.10,) * 6).verdict() == "now slower (sign test p = 0.031)"
    assert Ratios((0.80,) * 7 + (1.01,)).verdict() == "within noise"  # 7 of 8: p = 0.070
    assert Ratios((0.80,) * 8).verdict() == "now faster (sign test p = 0.008)"
    assert Ratios((1.10, 0.95) * 5).verdict() == "within noise"
    assert Ratios((1.01,) * 8).verdict(tolerance=0.02) == "within noise"  # consistent but too small to matter
    assert Ratios((1.2, 1.3, 1.1)).verdict() == "slower in 3 of 3 rounds: too few rounds for the sign test"
    assert Ratios((1.2, 0.8, 1.3)).verdict() == "within noise"


def test_ratio_row_reads_medians_ratios_and_verdict() -> None:
    row = benchlib.ratio_row("`--help`", [(100.0, 110.0), (120.0, 126.0), (80.0, 96.0)], "ms")
    assert row == (
        "| `--help` | 100.0 ms | 110.0 ms | **1.100** | 1.050 | 1.200 | 1.200 | 3 "
        "| slower in 3 of 3 rounds: too few rounds for the sign test |"
    )
    assert row.count("|") == benchlib.RATIO_HEADER.splitlines()[0].count("|")
