"""`zoo compare gmm` end to end with small settings."""

import arviz as az
import numpy as np
import pandas as pd
import pytest
import torch

from inference.verdict import KHAT_LIMIT
from zoo import data
from zoo.cli import main
from zoo.gmm import BayesianGaussianMixture, match_components
from zoo.gmm.conjugate import precisions_from_sites
from zoo.jobs.benchmark import MAX_ERROR
from zoo.jobs.compare_gmm import compare_methods, default_methods

SMALL = ["--n-samples", "120", "--steps", "60", "--no-progress"]


def test_compare_gmm_writes_everything(tmp_path, capsys):
    out = tmp_path / "gmm"
    code = main(["compare", "gmm", *SMALL, "--num-samples", "40", "--warmup", "40", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    methods = ("em", "variational_em", "map", "svi", "laplace", "pathfinder", "nuts")
    assert tuple(default_methods("lkj")) == methods
    for method in methods:
        assert method in printed
        idata = az.from_netcdf(out / f"{method}.nc")
        assert idata.posterior["means"].shape[-2:] == (3, 2)
    for name in ("losses.png", "posteriors.png", "clusters.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["method"]) == set(methods)
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    # variational EM with the exact E-step lands on EM's optimum
    assert summary.loc["variational_em", "log_lik"] == pytest.approx(summary.loc["em", "log_lik"], abs=1e-6)


def test_compare_from_python_and_user_csv(tmp_path):
    mix = data.make_mixture(100, 2, 3, seed=1)
    path = tmp_path / "mine.csv"
    pd.DataFrame(mix.X.numpy(), columns=["u", "v", "w"]).to_csv(path, index=False)
    code = main(
        [
            "compare",
            "gmm",
            "--csv",
            str(path),
            "--components",
            "2",
            "--methods",
            "em,laplace",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert code == 0 and (tmp_path / "o" / "laplace.nc").exists()
    result = compare_methods(mix.X, 2, methods=["em", "variational_em"])
    assert list(result["fits"]) == ["em", "variational_em"] and result["files"] == []


def test_user_csv_is_reported_in_its_own_units(tmp_path, capsys):
    """The fit runs on standardised columns, but comparison.csv, the InferenceData and the printed table
    give means and scales in the CSV's units, and say so."""
    mix = data.make_mixture(200, 2, 2, seed=1)
    a, b = np.array([100.0, 0.01]), np.array([1000.0, -3.0])  # columns of very different scales
    path = tmp_path / "mine.csv"
    pd.DataFrame(mix.X.numpy() * a + b, columns=["u", "v"]).to_csv(path, index=False)
    out = tmp_path / "o"
    assert (
        main(
            [
                "compare",
                "gmm",
                "--csv",
                str(path),
                "--components",
                "2",
                "--methods",
                "em,laplace",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "CSV's own units" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert set(table.loc[table["variable"].str.startswith(("means", "scales")), "units"]) == {"data"}
    assert set(table.loc[table["variable"].str.startswith("weights"), "units"]) == {"none"}
    em = table[table["method"] == "em"].set_index("variable")
    means = np.array([[em.loc[f"means[{k}, {d}]", "mean"] for d in range(2)] for k in range(2)])
    truth = mix.means.numpy() * a + b
    means = means[match_components(torch.as_tensor(means), torch.as_tensor(truth))]
    assert np.all(np.abs(means - truth) < 0.5 * a)  # within half a unit sd of the truth
    # the data's own scales: the mixture's unit-sd components, stretched by a
    scales = np.array([[em.loc[f"scales[{k}, {d}]", "mean"] for d in range(2)] for k in range(2)])
    assert np.all((scales > 0.3 * a) & (scales < 3 * a))
    # the InferenceData agrees with the table
    post = az.from_netcdf(out / "laplace.nc").posterior["means"].values.reshape(-1, 2, 2).mean(0)
    lap = table[table["method"] == "laplace"].set_index("variable")
    assert post[0, 0] == pytest.approx(lap.loc["means[0, 0]", "mean"], rel=0.01)
    assert post[1, 1] == pytest.approx(lap.loc["means[1, 1]", "mean"], abs=0.05 * a[1])
    # ... and its data and pointwise log-likelihood are the CSV's too: log p(x) = log p(x_std) - Σ_d log sd_d
    idata = az.from_netcdf(out / "laplace.nc")
    raw = mix.X.numpy() * a + b
    np.testing.assert_allclose(idata.observed_data["x"].values, raw, rtol=1e-6)
    ll = idata.log_likelihood["x"].values.reshape(-1, raw.shape[0])  # [draws, points]
    lppd = float(np.mean(np.logaddexp.reduce(ll, axis=0) - np.log(ll.shape[0])))
    standardised = pd.read_csv(out / "summary.csv", index_col=0).loc["laplace", "log_lik"]
    # the summary's log_lik is the same density on the standardised columns, from 200 other draws: their Monte
    # Carlo difference is about 0.002 nats per point here (p(x | θ) varies by a few % over the posterior)
    assert lppd == pytest.approx(standardised - np.log(raw.std(0)).sum(), abs=0.01)


def test_conjugate_prior_adds_cavi_with_the_same_posterior_as_nuts(tmp_path, capsys):
    """With --prior conjugate every Bayesian method, CAVI among them, fits the one Normal-Wishart model, so CAVI
    is scored against NUTS on weights, means and precisions, which every fit carries."""
    out = tmp_path / "conj"
    assert (
        main(
            [
                "compare",
                "gmm",
                *SMALL,
                "--prior",
                "conjugate",
                "--num-samples",
                "150",
                "--warmup",
                "60",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "conjugate prior" in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.index) == list(default_methods("conjugate"))
    assert {"cavi", "pathfinder"} <= set(summary.index)
    table = pd.read_csv(out / "comparison.csv")
    sites = set(table["variable"].str.extract(r"^(\w+)")[0])
    assert sites == {"weights", "means", "precisions"}
    assert (table.groupby("method")["variable"].count() == 3 + 3 * 2 + 3 * 2 * 2).all()
    # CAVI's k-hat, from its own importance weights, is reported and below the limit where PSIS gives up
    assert 0 < summary.loc["cavi", "khat"] < KHAT_LIMIT
    # its means agree with NUTS's to the accuracy bound of zoo benchmark (reference sds) plus the Monte
    # Carlo error of the two means: NUTS's sd/sqrt(ESS) and that of the 500 draws of q compared
    nuts = az.from_netcdf(out / "nuts.nc")
    ess = az.ess(nuts, var_names=["means"])["means"].values  # [K, D]
    cavi = table[(table["method"] == "cavi") & table["variable"].str.startswith("means")].set_index("variable")
    error = np.array([[cavi.loc[f"means[{k}, {d}]", "error"] for d in range(2)] for k in range(3)])
    assert np.all(np.abs(error) <= MAX_ERROR + 3.5 * np.sqrt(1 / ess + 1 / 500))
    # the precisions NUTS is compared on are its Bartlett draws mapped back, relabelled with them
    post = nuts.posterior
    priors = BayesianGaussianMixture(3, weight_concentration_prior_type="dirichlet_distribution").priors(
        data.make_mixture(120, 3, 2, seed=0).X
    )
    bartlett = {k: torch.as_tensor(post[k].values) for k in ("bartlett_chi2", "bartlett_normal")}
    np.testing.assert_allclose(post["precisions"].values, precisions_from_sites(bartlett, priors).numpy(), rtol=1e-10)
    # EM's precisions are the inverses of its covariances
    em = az.from_netcdf(out / "em.nc").posterior
    factor = em["scales"].values[..., None] * em["corr_chol"].values
    cov = factor @ np.swapaxes(factor, -1, -2)
    np.testing.assert_allclose(em["precisions"].values @ cov, np.broadcast_to(np.eye(2), cov.shape), atol=1e-10)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "em,cavi"], "--prior conjugate"),
        (["--prior", "conjugate", "--covariance-type", "diag"], "covariance_type 'full'"),
        (["--prior", "wishart"], "--prior"),
        (["--csv", "/no/such/file.csv"], "does not exist"),
        (["--methods", "em,magic"], "magic"),
        (["--n-samples", "0"], "--n-samples"),
        (["--components", "50", "--n-samples", "20"], "n_components"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    code = main(["compare", "gmm", "--out", str(tmp_path / "x"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("zoo: error:") and message in err and err.count("\n") == 1
