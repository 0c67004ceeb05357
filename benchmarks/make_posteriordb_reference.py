"""Condense posteriordb's reference draws into ``zoo/posteriordb/data/reference.json``.

    python benchmarks/make_posteriordb_reference.py [--shared ../shared/posteriordb] [--out PATH]

Reads ``draws/NAME.json.zip`` (10 chains x 1000 Stan draws, Stan's 1-based names) for each posteriordb
posterior of ``zoo.posteriordb`` and writes, per element of each latent Pyro sample site (0-based,
ArviZ-style labels: "beta[0]"), the mean, sd (ddof 1) and ArviZ's bulk ESS over the 10 chains, plus
the number of chains and draws. Where the Pyro site is not Stan's parameter, the draws are transformed:

- garch-garch11: ``beta1_raw = beta1 / (1 - alpha1)`` per draw (the Pyro model samples beta1_raw on
  (0, 1); see ``zoo.posteriordb.models.garch11``);
- gp_pois_regr-gp_pois_regr: posteriordb stores Stan's transformed parameter ``f = L f_tilde``, not the
  parameter ``f_tilde``, so ``f_tilde = L^-1 f`` per draw, with L the Cholesky factor of the model's
  kernel at that draw's (rho, alpha). The draws carry 15 significant digits and L^-1 amplifies their
  round-off by at most ~1e5 here (the jitter 1e-10 bounds it), so f_tilde is exact to ~1e-9.

Stan's transformed parameters and generated quantities that are not sample sites are left out.
Deterministic: run it again and the file is the same.
"""

import argparse
import json
import re
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from zoo import posteriordb  # noqa: E402

SIGNIFICANT = 10  # digits written: far below the reference's own Monte Carlo error (~1e-2 sd)


def read_json_zip(path):
    with zipfile.ZipFile(path) as z:
        (member,) = z.namelist()
        return json.loads(z.read(member))


def stack_chains(chains):
    """[{"beta[1]": [draws], ...} per chain] -> {"beta": array [chain, draw, *shape]}, 0-based, in the
    order the parameters first appear."""
    sites = {}
    for key in chains[0]:
        match = re.fullmatch(r"(\w+)\[([\d,\s]+)\]", key)
        name, index = (match.group(1), tuple(int(i) - 1 for i in match.group(2).split(","))) if match else (key, ())
        sites.setdefault(name, []).append(index)
    out = {}
    for name, indices in sites.items():
        values = np.array([[c[_stan_key(name, i)] for c in chains] for i in indices], dtype=np.float64)
        shape = tuple(max(i[d] for i in indices) + 1 for d in range(len(indices[0])))
        array = np.empty(values.shape[1:] + shape)
        for k, i in enumerate(indices):
            array[(Ellipsis,) + i] = values[k]
        out[name] = array
    return out


def _stan_key(name, index):
    return f"{name}[{','.join(str(i + 1) for i in index)}]" if index else name


def garch_sites(draws, data):
    beta1_raw = draws["beta1"] / (1 - draws["alpha1"])
    return {"mu": draws["mu"], "alpha0": draws["alpha0"], "alpha1": draws["alpha1"], "beta1_raw": beta1_raw}


def gp_sites(draws, data):
    x = np.asarray(data["x"], dtype=np.float64)
    rho, alpha, f = draws["rho"][..., None, None], draws["alpha"][..., None, None], draws["f"]
    cov = alpha**2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2)) + 1e-10 * np.eye(x.size)
    f_tilde = np.linalg.solve(np.linalg.cholesky(cov), f[..., None])[..., 0]
    return {"rho": draws["rho"], "alpha": draws["alpha"], "f_tilde": f_tilde}


TRANSFORMS = {"garch-garch11": garch_sites, "gp_pois_regr-gp_pois_regr": gp_sites}
DATA_NAMES = {"garch-garch11": "garch", "gp_pois_regr-gp_pois_regr": "gp_pois_regr"}


def summarize(sites):
    """{site: [chain, draw, *shape]} -> {label: {"mean", "sd", "ess_bulk"}}, ArviZ-style labels."""
    elements = {}
    for name, x in sites.items():
        for index in np.ndindex(*x.shape[2:]):
            label = f"{name}[{', '.join(map(str, index))}]" if index else name
            e = x[(slice(None), slice(None)) + index]
            elements[label] = {
                key: float(f"{value:.{SIGNIFICANT}g}")
                for key, value in (("mean", e.mean()), ("sd", e.std(ddof=1)), ("ess_bulk", az.ess(e)))
            }
    return elements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=ROOT.parent / "shared" / "posteriordb",
        help="the posteriordb subset with draws/ and data/",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "zoo" / "posteriordb" / "data" / "reference.json")
    args = parser.parse_args(argv)

    out = {
        "source": "posteriordb (github.com/stan-dev/posteriordb, commit 28f8d3d), draws/NAME.json.zip: "
        "Stan NUTS reference draws; BSD-3, see LICENCE.md",
        "made_by": "benchmarks/make_posteriordb_reference.py",
        "posteriors": {},
    }
    for name in posteriordb.names():
        if name.startswith("conjugate-"):
            continue
        chains = read_json_zip(args.shared / "draws" / f"{name}.json.zip")
        draws = stack_chains(chains)
        if name in TRANSFORMS:
            data = read_json_zip(args.shared / "data" / f"{DATA_NAMES[name]}.json.zip")
            draws = TRANSFORMS[name](draws, data)
        num_chains, num_draws = next(iter(draws.values())).shape[:2]
        out["posteriors"][name] = {
            "num_chains": num_chains,
            "num_draws": num_chains * num_draws,
            "elements": summarize(draws),
        }
        print(f"{name}: {len(out['posteriors'][name]['elements'])} elements, {num_chains} x {num_draws} draws")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
