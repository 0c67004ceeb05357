"""`zoo compare gmm` end to end with small settings."""
import arviz as az
import numpy as np
import pandas as pd
import pytest
import torch

from zoo import data
from zoo.cli import main
from zoo.gmm import compare_methods, match_components


def test_compare_gmm_writes_everything(tmp_path, capsys):
    out = tmp_path / "gmm"
    code = main(["compare", "gmm", "--n-samples", "120", "--steps", "60", "--num-samples", "40", "--warmup", "40",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for method in ("em", "variational_em", "map", "svi", "laplace", "nuts"):
        assert method in printed
        idata = az.from_netcdf(out / f"{method}.nc")
        assert idata.posterior["means"].shape[-2:] == (3, 2)
    for name in ("losses.png", "posteriors.png", "clusters.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["method"]) == {"em", "variational_em", "map", "svi", "laplace", "nuts"}
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    # variational EM with the exact E-step lands on EM's optimum
    assert summary.loc["variational_em", "log_lik"] == pytest.approx(summary.loc["em", "log_lik"], abs=1e-6)


def test_compare_from_python_and_user_csv(tmp_path):
    mix = data.make_mixture(100, 2, 3, seed=1)
    path = tmp_path / "mine.csv"
    pd.DataFrame(mix.X.numpy(), columns=["u", "v", "w"]).to_csv(path, index=False)
    code = main(["compare", "gmm", "--csv", str(path), "--components", "2", "--methods", "em,laplace",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0 and (tmp_path / "o" / "laplace.nc").exists()
    result = compare_methods(mix.X, 2, methods=["em", "variational_em"])
    assert list(result["fits"]) == ["em", "variational_em"] and result["files"] == []


def test_user_csv_is_reported_in_its_own_units(tmp_path, capsys):
    """The fit runs on standardised columns, but comparison.csv, the InferenceData and the printed table
    give means and scales in the CSV's units, and say so."""
    mix = data.make_mixture(200, 2, 2, seed=1)
    a, b = np.array([100.0, 0.01]), np.array([1000.0, -3.0])      # columns of very different scales
    path = tmp_path / "mine.csv"
    pd.DataFrame(mix.X.numpy() * a + b, columns=["u", "v"]).to_csv(path, index=False)
    out = tmp_path / "o"
    assert main(["compare", "gmm", "--csv", str(path), "--components", "2", "--methods", "em,laplace",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "CSV's own units" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert set(table.loc[table["variable"].str.startswith(("means", "scales")), "units"]) == {"data"}
    assert set(table.loc[table["variable"].str.startswith("weights"), "units"]) == {"none"}
    em = table[table["method"] == "em"].set_index("variable")
    means = np.array([[em.loc[f"means[{k}, {d}]", "mean"] for d in range(2)] for k in range(2)])
    truth = mix.means.numpy() * a + b
    means = means[match_components(torch.as_tensor(means), torch.as_tensor(truth))]
    assert np.all(np.abs(means - truth) < 0.5 * a)                 # within half a unit sd of the truth
    # the data's own scales: the mixture's unit-sd components, stretched by a
    scales = np.array([[em.loc[f"scales[{k}, {d}]", "mean"] for d in range(2)] for k in range(2)])
    assert np.all((scales > 0.3 * a) & (scales < 3 * a))
    # the InferenceData agrees with the table
    post = az.from_netcdf(out / "laplace.nc").posterior["means"].values.reshape(-1, 2, 2).mean(0)
    lap = table[table["method"] == "laplace"].set_index("variable")
    assert post[0, 0] == pytest.approx(lap.loc["means[0, 0]", "mean"], rel=0.01)
    assert post[1, 1] == pytest.approx(lap.loc["means[1, 1]", "mean"], abs=0.05 * a[1])


@pytest.mark.parametrize("argv, message", [
    (["--csv", "/no/such/file.csv"], "does not exist"),
    (["--methods", "em,magic"], "magic"),
    (["--n-samples", "0"], "--n-samples"),
    (["--components", "50", "--n-samples", "20"], "n_components"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    code = main(["compare", "gmm", "--out", str(tmp_path / "x"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("zoo: error:") and message in err and err.count("\n") == 1
