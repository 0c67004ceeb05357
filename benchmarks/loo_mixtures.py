"""How many components? PSIS-LOO of the Bayesian mixture with K = 2..5 on `zoo compare gmm`'s data (three
clusters), through ``Fit.to_inference_data``'s pointwise log-likelihood and ``az.compare``.

Each K is fitted by NUTS on ``GaussianMixture(K).fit(X).to_pyro(X).bayes_model`` (the assignments summed out,
so the log-likelihood is the marginal mixture density per point), from EM's fit.

    python benchmarks/loo_mixtures.py --out /tmp/loo     # prints az.compare's table, writes loo_mixtures.png
"""

import argparse
import warnings
from pathlib import Path

import inference
from inference.common import az
from inference.plots import save_figure
from zoo import GaussianMixture, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--components", default="2,3,4,5")
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--out", default="loo-mixtures")
    args = parser.parse_args()
    X = data.make_mixture(300, 3, 2, seed=0).X
    idatas = {}
    for K in (int(k) for k in args.components.split(",")):
        models = GaussianMixture(K, n_init=5, seed=0).fit(X).to_pyro(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", inference.ConvergenceWarning)
            fit = inference.nuts(
                models.bayes_model,
                X,
                num_samples=args.num_samples,
                warmup_steps=args.warmup,
                init=models.bayes_init,
                max_plate_nesting=1,
                progress=False,
            )
        idatas[f"K={K}"] = fit.to_inference_data(posterior_predictive=False)
        print(f"K={K}: NUTS {fit.seconds:.1f} s, converged {fit.diagnostics['converged']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = az.compare(idatas)
    print(table[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "weight", "warning"]].to_string())
    ax = az.plot_compare(table, figsize=(6, 2.6))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("wrote", save_figure(ax.figure, out / "loo_mixtures.png"))


if __name__ == "__main__":
    main()
