"""`zoo benchmark` (zoo.jobs.benchmark) on a tiny posterior of its own, with Laplace and fake methods."""

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
from inference.errors import ConvergenceWarning, InvalidInputError
from zoo.cli import main
from zoo.jobs import benchmark

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Posterior:
    """The fields of a ``zoo.posteriordb`` posterior that the benchmark uses."""

    name: str
    model: object
    data: tuple
    reference: dict
    exact: bool = True
    description: str = ""
    nuts: dict = field(default_factory=dict)
    cheap: bool = True


def normal_mean(name="normal-mean", n=20):
    """theta ~ N(0, I_2), y_i ~ N(theta, I_2): theta | y ~ N(sum(y) / (n + 1), I_2 / (n + 1)), exactly."""
    y = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) + torch.tensor([1.0, -0.5])

    def model(y):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)

    mean, sd = y.sum(0) / (n + 1), (n + 1) ** -0.5
    reference = {f"theta[{i}]": (float(mean[i]), sd) for i in range(2)}
    return Posterior(name, model, (y,), reference)


def fake_method(shift, scale, converged=True, warn=None, calls=None):
    """A method whose fit's draws have, per element i, mean ref_mean + shift[i] ref_sd and sd
    scale[i] ref_sd exactly (1000 standardised normal draws), so the scores are known by hand."""
    z = torch.randn(1000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = (z - z.mean()) / z.std()  # mean 0, sd (ddof=1) 1 exactly

    def method(posterior, seed):
        if calls is not None:
            calls.append((posterior.name, seed))
        if warn:
            warnings.warn(warn, ConvergenceWarning)
        means, sds, shifts, scales = (
            torch.tensor(v, dtype=torch.float64) for v in (*zip(*posterior.reference.values()), shift, scale)
        )
        theta = means + sds * (shifts + scales * z)
        return inference.Fit(
            method="fake",
            losses=[],
            seconds=0.5,
            draw=lambda n, seed: {"theta": theta[:n]},
            diagnostics={"converged": converged, "khat": 0.3},
        )

    return method


def broken_method(posterior, seed):
    raise RuntimeError("boom")


@pytest.fixture
def fakes(monkeypatch):
    """Fake methods in the benchmark's table, for this test only."""
    methods = {
        "fake-good": fake_method([0.05, -0.1], [1.0, 1.1]),
        "fake-off": fake_method([0.1, -0.5], [0.9, 2.0]),
        "fake-warned": fake_method([0.1, -0.5], [0.9, 2.0], warn="the loss had not settled"),
        "fake-unconverged": fake_method([0.0, 0.0], [1.0, 1.0], converged=False),
        "fake-broken": broken_method,
    }
    for name, method in methods.items():
        monkeypatch.setitem(benchmark.METHODS, name, method)
    return list(methods)


def test_scores_verdicts_and_acceptance_check(fakes):
    table = benchmark.run_benchmark([normal_mean()], fakes, progress=False).set_index("method")
    assert list(table.columns) == [c for c in benchmark.COLUMNS if c != "method"]
    off = table.loc["fake-off"]
    # by hand: errors 0.1 and -0.5 sds, sd ratios 0.9 and 2.0
    assert off["max_abs_error"] == pytest.approx(0.5, abs=1e-9)
    assert (off["min_sd_ratio"], off["max_sd_ratio"]) == pytest.approx((0.9, 2.0), abs=1e-9)
    assert (off["khat"], off["seconds"], off["status"]) == (0.3, 0.5, "ok")
    assert (off["verdict"], off["accurate"], off["trusted_or_warned"]) == ("ok", False, False)  # silently wrong
    good = table.loc["fake-good"]
    assert good["max_abs_error"] == pytest.approx(0.1, abs=1e-9)
    assert (good["verdict"], good["accurate"], good["trusted_or_warned"]) == ("ok", True, True)
    warned = table.loc["fake-warned"]
    assert (warned["verdict"], warned["accurate"], warned["trusted_or_warned"]) == ("warned", False, True)
    assert "the loss had not settled" in warned["warnings"]
    assert table.loc["fake-unconverged", "verdict"] == "warned"  # converged False, though no warning
    broken = table.loc["fake-broken"]  # recorded; the run went on after it
    assert broken["status"] == "failed" and broken["error"] == "RuntimeError: boom"
    assert np.isnan(broken["max_abs_error"]) and pd.isna(broken["verdict"])
    assert list(table.index) == fakes  # every cell, in the order asked


def test_files_with_laplace_and_a_failing_method(fakes, tmp_path):
    out = tmp_path / "bench"
    table = benchmark.run_benchmark(
        [normal_mean("a"), normal_mean("b")], ["fake-broken", "laplace"], out=out, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "results.csv", "table.md"]  # no .tmp
    saved = pd.read_csv(out / "results.csv")
    assert list(saved.columns) == benchmark.COLUMNS
    assert list(zip(saved["posterior"], saved["method"])) == [
        ("a", "fake-broken"),
        ("a", "laplace"),
        ("b", "fake-broken"),
        ("b", "laplace"),
    ]
    assert list(saved["status"]) == ["failed", "ok", "failed", "ok"]
    laplace = table[table["method"] == "laplace"]
    # the posterior is Gaussian, so Laplace is exact: what is left is the Monte Carlo error of 1000 draws
    assert (laplace["max_abs_error"] < 0.15).all() and laplace["accurate"].all()
    assert (out / "heatmap.png").read_bytes()[:8] == PNG
    markdown = (out / "table.md").read_text()
    assert "| posterior | fake-broken | laplace |" in markdown and "| failed |" in markdown
    assert "✓" in markdown and "accurate" in markdown  # the cells and the legend


def test_interrupted_run_keeps_its_cells_and_resume_skips_them(fakes, monkeypatch, tmp_path):
    posteriors = [normal_mean("a"), normal_mean("b")]
    calls = []

    def interrupt(posterior, seed):
        raise KeyboardInterrupt

    monkeypatch.setitem(benchmark.METHODS, "fake-good", fake_method([0.0, 0.0], [1.0, 1.0], calls=calls))
    monkeypatch.setitem(benchmark.METHODS, "fake-off", interrupt)
    with pytest.raises(KeyboardInterrupt):  # not an Exception: it stops the run
        benchmark.run_benchmark(posteriors, ["fake-good", "fake-broken", "fake-off"], out=tmp_path, progress=False)
    saved = pd.read_csv(tmp_path / "results.csv")
    assert list(zip(saved["method"], saved["status"])) == [("fake-good", "ok"), ("fake-broken", "failed")]

    monkeypatch.setitem(benchmark.METHODS, "fake-off", fake_method([0.0, 0.0], [1.0, 1.0], calls=calls))
    table = benchmark.run_benchmark(
        posteriors, ["fake-good", "fake-broken", "fake-off"], out=tmp_path, progress=False, resume=True
    )
    # a/fake-good was finished and is kept; the failed cell is tried again; the rest run
    assert calls == [("a", 0), ("a", 0), ("b", 0), ("b", 0)]
    assert len(table) == 6 and len(pd.read_csv(tmp_path / "results.csv")) == 6
    assert (table["status"] == "ok").sum() == 4
    again = benchmark.run_benchmark(posteriors, ["fake-good"], out=tmp_path, progress=False, resume=True)
    assert len(calls) == 4 and len(again) == 6  # nothing left to fit; the other cells stay in the file


def test_reweighted_row_reuses_the_laplace_fit(monkeypatch):
    calls = []

    def laplace(posterior, seed):
        calls.append(posterior.name)
        warnings.warn("the base fit is off", ConvergenceWarning)
        return inference.laplace(posterior.model, *posterior.data, seed=seed)

    monkeypatch.setitem(benchmark.METHODS, "laplace", benchmark.reuse_last(laplace))
    table = benchmark.run_benchmark([normal_mean()], ["laplace+psis", "laplace"], progress=False)
    table = table.set_index("method")
    assert calls == ["normal-mean"]  # one fit serves both rows
    assert (table["status"] == "ok").all() and table["accurate"].all()
    assert table.loc["laplace+psis", "seconds"] >= table.loc["laplace", "seconds"]  # fit + reweighting
    # the base fit's warning belongs to the base row, even when that row reuses the fit
    assert table.loc["laplace", "verdict"] == "warned" and "base fit is off" in table.loc["laplace", "warnings"]
    assert table.loc["laplace+psis", "verdict"] == "ok" and table.loc["laplace+psis", "khat"] < 0.5


def test_unknown_names_are_rejected(capsys):
    with pytest.raises(InvalidInputError, match="unknown method.*'nope'.*valid: nuts, laplace"):
        benchmark.run_benchmark([normal_mean()], ["laplace", "nope"])
    with pytest.raises(InvalidInputError, match="resume=True needs out"):
        benchmark.run_benchmark([normal_mean()], ["laplace"], resume=True)
    assert main(["benchmark", "--methods", "laplace,nope"]) == 2
    error = capsys.readouterr().err
    assert "argument --methods: unknown method(s) 'nope'; valid: nuts, laplace, laplace+psis" in error


def test_cli_runs_the_job(fakes, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(benchmark, "load_posteriors", lambda names: [normal_mean("a")])
    out = tmp_path / "cli"
    code = main(["benchmark", "--methods", "fake-good,fake-off,fake-broken", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 wrong fit(s) without a warning" in printed and "a / fake-off" in printed
    assert "a / fake-broken: RuntimeError: boom" in printed
    assert len(pd.read_csv(out / "results.csv")) == 3 and (out / "table.md").is_file()


def test_cli_rejects_an_unknown_posterior(capsys):
    posteriordb = pytest.importorskip("zoo.posteriordb")
    assert main(["benchmark", "--posteriors", "no-such-posterior"]) == 2
    error = capsys.readouterr().err
    assert "unknown posterior(s) 'no-such-posterior'; valid: " in error and posteriordb.names()[0] in error


def test_list_names_the_benchmark(capsys):
    assert main(["list"]) == 0
    assert "zoo benchmark" in capsys.readouterr().out
