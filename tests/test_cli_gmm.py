"""`zoo compare gmm` end to end with small settings."""
import arviz as az
import pandas as pd
import pytest

from zoo import data
from zoo.cli import main
from zoo.gmm import compare_methods


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
