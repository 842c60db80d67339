"""The demo campaign (`make demo`, productions/mocks.yaml): its three steps on real files, run
the way a task runs them (``python -m`` in a subprocess where the exit code and stderr are
the point), the production validated by the CLI against the repository, and the whole
campaign run by `reconcile watch` on the local backend in a scratch repository."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from reconciler import markers
from reconciler.demo import covariance, generate, measure
from reconciler.spec.load import WorkTree, load

from .conftest import ROOT, git
from .test_loop_local import env_for, reconcile, sent_to_scheduler, wait_quiet, watched_to_the_end

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight catalogs at z=0.5, as the campaign's generate stage makes them (the first through
    the module name productions run, the others in-process: the same main)."""
    d = tmp_path_factory.mktemp("catalogs")
    first = run("reconciler.demo_generator", "--realization", "0", "--redshift", "0.5", "--n-galaxies", "2000", "--sleep", "0", "--output", d / "r0.hdf5")
    assert first.returncode == 0, first.stderr
    for r in range(1, 8):
        assert generate.main(["--realization", str(r), "--redshift", "0.5", "--n-galaxies", "2000", "--sleep", "0", "--output", str(d / f"r{r}.hdf5")]) == 0
    return [d / f"r{r}.hdf5" for r in range(8)]


@pytest.fixture(scope="module")
def statistics(catalogs: list[Path]) -> list[Path]:
    out = []
    for cat in catalogs:
        pk = cat.parent / "pk" / f"{cat.stem}.npy"
        assert measure.main([str(cat), "--output", str(pk), "--sleep", "0"]) == 0
        out.append(pk)
    return out


def write_list(path: Path, members: list[Path]) -> Path:
    """A list file as the task wrapper writes it for a fan-in: one absolute path per line."""
    path.write_text("".join(f"{m.resolve()}\n" for m in members))
    return path


# ---------------------------------------------------------------- measure


def test_measure_writes_a_deterministic_statistic_of_its_catalog_alone(catalogs: list[Path], tmp_path: Path) -> None:
    r = run("reconciler.demo.measure", catalogs[0], "--output", tmp_path / "a/pk.npy", "--sleep", "0")
    assert r.returncode == 0, r.stderr
    again = run("reconciler.demo.measure", catalogs[0], "--output", tmp_path / "b/pk.npy", "--sleep", "0")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "a/pk.npy").read_bytes() == (tmp_path / "b/pk.npy").read_bytes()
    pk = np.load(tmp_path / "a/pk.npy")
    assert pk.shape == (measure.DEFAULT_BINS,) and pk.dtype == np.float64
    assert np.all(np.isfinite(pk)) and np.all(pk > 0)  # every ring of |k| holds modes
    other = tmp_path / "other.npy"
    assert measure.main([str(catalogs[1]), "--output", str(other), "--sleep", "0"]) == 0
    assert not np.array_equal(np.load(other), pk)  # another realization, another spectrum


def test_power_spectrum_of_a_uniform_sky_is_shot_noise() -> None:
    """Positions drawn uniformly on the sphere have P(k) = 1/nbar in every ring (in cells^-1
    units): a check that the grid is equal-area and the normalization right. Averaged over
    16 skies, since the first rings hold only a few modes each."""
    rng = np.random.default_rng(7)
    n = 100_000
    skies = []
    for _ in range(16):
        ra = rng.uniform(0.0, 360.0, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        skies.append(measure.power_spectrum(ra, dec))
    ratio = np.mean(skies, axis=0) / (measure.CELLS**2 / n)
    assert np.allclose(ratio, 1.0, rtol=0.3), ratio
    assert abs(ratio.mean() - 1.0) < 0.03, ratio.mean()
    flat_in_dec = measure.power_spectrum(rng.uniform(0.0, 360.0, n), rng.uniform(-90.0, 90.0, n))
    assert flat_in_dec[0] > 10 * measure.CELLS**2 / n  # uniform in dec is not uniform on the sky: large-scale power


def test_measure_refuses_a_catalog_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as fh:
        fh.create_dataset("galaxies/mag", data=np.zeros(3))
    r = run("reconciler.demo.measure", bad, "--output", tmp_path / "pk.npy", "--sleep", "0")
    assert r.returncode == 1 and "galaxies/ra" in r.stderr and str(bad) in r.stderr
    assert not (tmp_path / "pk.npy").exists()


# ---------------------------------------------------------------- covariance


def test_covariance_of_eight_statistics_with_its_picture(statistics: list[Path], tmp_path: Path) -> None:
    lst = write_list(tmp_path / "members.txt", statistics)
    out = tmp_path / "cov" / "cov_z0.500.npy"
    png = tmp_path / "cov" / "cov_z0.500.png"
    r = run("reconciler.demo.covariance", "--list", lst, "--output", out, "--png", png, "--redshift", "0.5", "--sleep", "0")
    assert r.returncode == 0, r.stderr
    cov = np.load(out)
    bins = measure.DEFAULT_BINS
    assert cov.shape == (bins, bins) and cov.dtype == np.float64
    rows = np.array([np.load(p) for p in statistics])
    assert np.allclose(cov, cov.T) and np.allclose(np.diag(cov), rows.var(axis=0, ddof=1))
    assert np.linalg.matrix_rank(cov) == len(statistics) - 1  # 8 realizations: rank 7, as a sample covariance is
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000
    first = out.read_bytes()
    assert covariance.main(["--list", str(lst), "--output", str(out), "--png", str(png), "--sleep", "0"]) == 0
    assert out.read_bytes() == first  # the same members, the same matrix


def test_picture_title_names_redshift_and_count() -> None:
    assert covariance.title(0.5, 8) == "z=0.500 from 8 realizations"
    assert covariance.title(None, 3) == "from 3 realizations"


def test_png_defaults_to_beside_the_matrix(statistics: list[Path], tmp_path: Path) -> None:
    lst = write_list(tmp_path / "members.txt", statistics[:2])
    assert covariance.main(["--list", str(lst), "--output", str(tmp_path / "c.npy"), "--sleep", "0"]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC and np.load(tmp_path / "c.npy").shape == (20, 20)


@pytest.mark.parametrize("count", [0, 1])
def test_covariance_refuses_fewer_than_two_statistics(statistics: list[Path], tmp_path: Path, count: int) -> None:
    lst = write_list(tmp_path / "members.txt", statistics[:count])
    r = run("reconciler.demo.covariance", "--list", lst, "--output", tmp_path / "cov.npy", "--sleep", "0")
    assert r.returncode == 2
    assert f"at least 2 statistics, the list names {count}" in r.stderr and str(lst) in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["members.txt"]  # nothing written


def test_covariance_refuses_statistics_of_different_lengths(statistics: list[Path], tmp_path: Path) -> None:
    short = tmp_path / "short.npy"
    np.save(short, np.ones(5))
    lst = write_list(tmp_path / "members.txt", [statistics[0], short])
    r = run("reconciler.demo.covariance", "--list", lst, "--output", tmp_path / "cov.npy", "--sleep", "0")
    assert r.returncode == 2 and "short.npy has shape (5,)" in r.stderr
    assert not (tmp_path / "cov.npy").exists() and not (tmp_path / "cov.png").exists()


def test_covariance_refuses_a_missing_list(tmp_path: Path) -> None:
    r = run("reconciler.demo.covariance", "--list", tmp_path / "nope.txt", "--output", tmp_path / "cov.npy", "--sleep", "0")
    assert r.returncode == 2 and "cannot read the list" in r.stderr


# ---------------------------------------------------------------- the production


def test_mocks_production_validates() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", "--all-machines", "productions/mocks.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    for machine in ("local", "nersc"):
        assert f"ok      productions/mocks.yaml (51 tasks on {machine}: generate 24, measure 24, covariance 3)" in r.stdout


# ---------------------------------------------------------------- the campaign end to end

MOCKS_FAIL_ONCE = {"generate/r0004/z1.500", "generate/r0005/z0.500"}  # (1000 r + 1000 z) % 11 == 0


def test_make_demo_campaign_converges_and_fans_in_after_its_members(repo: Path, tmp_path: Path) -> None:
    """What `make demo` runs, in a scratch clone: every task runs once (twice for the two that
    fail once), each measure starts after its catalog ended, and each covariance starts after
    every measure task of its redshift ended (the markers' clocks, written by the wrapper)."""
    env = env_for(tmp_path)
    status = watched_to_the_end(repo, env, "mocks", timeout=300)
    assert status["counts"]["complete"] == 51 and status["done"]
    assert {x["key"] for x in status["retried"]} == MOCKS_FAIL_ONCE

    loaded = load(WorkTree(repo), "mocks", repo_root=repo)
    pdir = loaded.production_dir
    tasks = loaded.expansion().tasks
    marks = {t.key: markers.read_marker(pdir, t) for t in tasks}
    assert all(marks.values()), [k for k, m in marks.items() if not m]
    by_stage: dict[str, list[str]] = {}
    for key in marks:
        by_stage.setdefault(key.split("/")[0], []).append(key)
    assert {s: len(k) for s, k in by_stage.items()} == {"generate": 24, "measure": 24, "covariance": 3}
    for key in by_stage["measure"]:
        upstream = "generate/" + key.split("/", 1)[1]
        assert marks[key]["start"] > marks[upstream]["end"], (key, marks[key], marks[upstream])
    for key in by_stage["covariance"]:
        z = key.split("/")[-1]
        members = [k for k in by_stage["measure"] if k.endswith("/" + z)]
        assert len(members) == 8
        last = max(marks[m]["end"] for m in members)
        assert marks[key]["start"] > last, (key, marks[key]["start"], last)
        cov = np.load(pdir / "cov" / f"cov_{z}.npy")
        assert cov.shape == (20, 20) and np.all(np.isfinite(cov))
        assert (pdir / "cov" / f"cov_{z}.png").read_bytes()[:8] == PNG_MAGIC
    assert sent_to_scheduler(tmp_path / "spool") == Counter({k: 2 if k in MOCKS_FAIL_ONCE else 1 for k in marks})
    plan = reconcile(repo, env, "plan", "mocks")
    assert plan.returncode == 0 and "nothing to do" in plan.stdout, plan.stdout
    assert git(repo, "status", "--porcelain") == ""
    wait_quiet(tmp_path / "spool")


def test_make_demo_pool_runs_the_campaign_inside_two_worker_jobs(repo: Path, tmp_path: Path) -> None:
    """What `make demo-pool` runs (its --set lines, read from the Makefile): the same campaign,
    every task through two pool workers, no job array; fan-ins still after their members."""
    sets = next(line.split("=", 1)[1].split() for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("POOL_DEMO ="))
    env = env_for(tmp_path)
    r = reconcile(repo, env, "watch", "mocks", *sets, "--until-done", "--interval", "0.5", timeout=300)
    assert r.returncode == 0 and "every task is complete" in r.stdout, r.stderr
    st = reconcile(repo, env, "status", "mocks", *sets, "--json")
    status = json.loads(st.stdout)
    assert status["counts"]["complete"] == 51 and {x["key"] for x in status["retried"]} == MOCKS_FAIL_ONCE
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "spool" / "jobs").glob("[0-9]*/job.json")]
    assert jobs and all(".pool." in j["name"] for j in jobs), [j["name"] for j in jobs]
    assert sum(len(j["array_indices"]) for j in jobs) <= 6, jobs
    assert set(status["pool"]["stages"]) == {"generate", "measure", "covariance"}, status["pool"]
    loaded = load(WorkTree(repo), "mocks", repo_root=repo, overrides=[(("outputs", "base_path"), "work/pool")])
    pdir = loaded.production_dir
    assert pdir == repo / "work" / "pool" / "mocks"
    marks = {t.key: markers.read_marker(pdir, t) for t in loaded.expansion().tasks}
    for z in ("z0.500", "z1.000", "z1.500"):
        last = max(m["end"] for k, m in marks.items() if k.startswith("measure/") and k.endswith(z))
        assert marks[f"covariance/{z}"]["start"] > last
    text = reconcile(repo, env, "status", "mocks", *sets).stdout
    assert "node-hours" in text, text
