# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Inference methods side by side
#
# **What this notebook teaches.** Every method in `inference` maximises one objective, the evidence lower
# bound (ELBO), over a different family of approximations. On a model small enough that the exact answer
# is known in closed form, this notebook
#
# 1. fits the same posterior with SVI (a mean-field and a full-rank Gaussian guide), the Laplace
#    approximation and NUTS, and overlays the posteriors and the loss traces;
# 2. checks the identity $\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(z \mid x))$ numerically:
#    both sides are computable here;
# 3. runs EM and variational EM, the methods that also learn parameters $\theta$ of the model;
# 4. shows when to trust which: the error table of `inference.compare` and the Pareto $\hat k$ of PSIS,
#    which flags a bad approximation *without* knowing the exact answer.
#
# The maths is in MATH.md §1 of the project.

# %%
# %matplotlib inline
import math
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.patches import Ellipse
from pyro.distributions import constraints

import inference
import zoo
from zoo.data import make_mixture

QUICK = os.environ.get("ZOO_NOTEBOOK_QUICK") == "1"  # the test suite runs a smaller version
STEPS = 2000 if QUICK else 5000  # SVI steps
DRAWS = 400 if QUICK else 2000  # NUTS draws (and draws for the tables)
torch.set_default_dtype(torch.float64)
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. A model with a known posterior
#
# Bayesian linear regression with an intercept: $y_n = w_0 + w_1 x_n + \varepsilon_n$,
# $\varepsilon_n \sim \mathcal N(0, \sigma^2)$ with $\sigma$ known, and the prior $w \sim \mathcal N(0, s_0^2 I)$.
# With the design matrix $X = [1, x]$, the posterior is Gaussian,
#
# $$p(w \mid y) = \mathcal N(m_N, S_N),\qquad S_N^{-1} = X^\top X/\sigma^2 + I/s_0^2,\qquad
# m_N = S_N X^\top y / \sigma^2,$$
#
# and so is the evidence, $y \sim \mathcal N(0,\ \sigma^2 I + s_0^2 X X^\top)$. The inputs $x$ lie in
# $[1, 3]$, away from 0, so intercept and slope trade off against each other: the posterior is a narrow,
# strongly tilted ellipse. That is the case where approximations differ.

# %%
g = torch.Generator().manual_seed(0)
N, sigma, s0 = 20, 0.5, 2.0
x = 1.0 + 2.0 * torch.rand(N, generator=g)
X = torch.stack([torch.ones(N), x], -1)
y = X @ torch.tensor([1.0, 0.5]) + sigma * torch.randn(N, generator=g)


def model(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), s0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


S_N = torch.linalg.inv(X.T @ X / sigma**2 + torch.eye(2) / s0**2)
m_N = S_N @ X.T @ y / sigma**2
posterior = dist.MultivariateNormal(m_N, S_N)
log_evidence = dist.MultivariateNormal(torch.zeros(N), sigma**2 * torch.eye(N) + s0**2 * X @ X.T).log_prob(y)
print(
    "posterior mean",
    m_N.numpy().round(3),
    " sds",
    S_N.diag().sqrt().numpy().round(3),
    " correlation",
    round((S_N[0, 1] / S_N.diag().prod().sqrt()).item(), 3),
)
print("log evidence log p(y) =", round(log_evidence.item(), 4))

# %% [markdown]
# ## 2. Four methods on it
#
# * **SVI** maximises the ELBO $F(q) = \mathbb E_q[\log p(y, w) - \log q(w)]$ by stochastic gradients over a
#   *guide* $q$. Two guides, written out so that nothing is hidden: a **mean-field** Gaussian (independent
#   coordinates, $q(w) = \prod_i \mathcal N(w_i; \mu_i, s_i^2)$) and a **full-rank** Gaussian
#   $\mathcal N(\mu, L L^\top)$.
# * **Laplace** finds the mode $w^*$ (MAP) and puts a Gaussian there with covariance the inverse Hessian of
#   $-\log p(y, w)$. The log-posterior here is exactly quadratic, so Laplace is exact.
# * **NUTS** draws samples from the exact posterior (Hamiltonian Monte Carlo with automatic path lengths):
#   the reference in practice, when no closed form exists. Two chains, so that they can be checked
#   against each other.
#
# The SVI fits use a learning rate that decays along a cosine from 0.05 to 0.001: with a constant rate
# the parameters keep jittering around the optimum, driven by the noise of the one-sample gradient
# (notebook 5 is about such choices).


# %%
def mean_field(X, y):
    loc = pyro.param("loc", torch.zeros(2))
    scale = pyro.param("scale", torch.ones(2), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


def full_rank(X, y):
    loc = pyro.param("loc", torch.zeros(2))
    scale_tril = pyro.param("scale_tril", torch.eye(2), constraint=constraints.lower_cholesky)
    pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def exact_fit():
    """The closed-form posterior as a Fit, so that it sits in the same tables and figures."""
    L = torch.linalg.cholesky(S_N)

    def draw(num_samples, seed=0):
        eps = torch.randn(num_samples, 2, generator=torch.Generator().manual_seed(seed))
        return {"w": m_N + eps @ L.T}

    return inference.Fit(method="exact", losses=np.zeros(0), seconds=0.0, draw=draw)


with warnings.catch_warnings():
    # every fit judges itself (fit.diagnostics["converged"]); section 4 reads those verdicts against the
    # exact answer, so they are not printed here as they arise
    warnings.simplefilter("ignore", inference.ConvergenceWarning)
    fits = {
        "SVI mean-field": inference.svi(
            model, mean_field, X, y, steps=STEPS, lr=0.05, schedule="cosine", lr_min=1e-3, progress=False
        ),
        "SVI full-rank": inference.svi(
            model, full_rank, X, y, steps=STEPS, lr=0.05, schedule="cosine", lr_min=1e-3, progress=False
        ),
        "Laplace": inference.laplace(model, X, y),
        "NUTS": inference.nuts(
            model, X, y, num_samples=DRAWS // 2, warmup_steps=DRAWS // 2, num_chains=2, progress=False
        ),
        "exact": exact_fit(),
    }
for name, fit in fits.items():
    print(f"{name:15s} {fit.seconds:6.2f} s")

# %% [markdown]
# The marginal posteriors of $w_0$ and $w_1$, and each method's mean and 94% interval
# (`inference.plot_posteriors`):

# %%
fig = inference.plot_posteriors(fits, var_names=["w"], num_samples=DRAWS)
fig

# %% [markdown]
# The marginals hide what went wrong; the joint shows it. Below: the exact posterior's 1- and
# 2-sd ellipses, and draws from each approximation.


# %%
def ellipse(ax, mean, cov, **kw):
    vals, vecs = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    for k in (1, 2):
        ax.add_patch(Ellipse(mean, 2 * k * np.sqrt(vals[-1]), 2 * k * np.sqrt(vals[0]), angle=angle, fill=False, **kw))


fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharex=True, sharey=True)
for ax, name in zip(axes, ["SVI mean-field", "SVI full-rank", "Laplace", "NUTS"]):
    w = fits[name].samples(DRAWS, seed=1)["w"].numpy()
    ax.plot(w[:, 0], w[:, 1], ".", ms=2, alpha=0.5, color="C0")
    ellipse(ax, m_N.numpy(), S_N.numpy(), color="k", lw=1.2)
    ax.set(title=name, xlabel="$w_0$ (intercept)")
axes[0].set_ylabel("$w_1$ (slope)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The mean-field guide cannot tilt: the best axis-aligned Gaussian under
# $\mathrm{KL}(q \,\|\, p)$ matches the posterior's *conditional* widths, which are far narrower than
# its marginal ones. It is **over-confident** — the classic failure of mean-field variational inference.
# The full-rank guide, Laplace and NUTS all recover the tilted ellipse.
#
# ## 3. The identity $\log p(y) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(w \mid y))$
#
# For any density $q$ (MATH.md (1.1)),
#
# $$\log p(y) = \underbrace{\mathbb E_q[\log p(y, w) - \log q(w)]}_{\mathrm{ELBO}(q)}
# + \underbrace{\mathbb E_q\!\left[\log \frac{q(w)}{p(w \mid y)}\right]}_{\mathrm{KL}(q\,\|\,p(w\mid y))\ \ge\ 0}.$$
#
# Here every term is computable: $\log p(y)$ in closed form (above), the KL between two Gaussians in closed
# form, and the ELBO of each trained guide by Monte Carlo over draws from it. The gap between the ELBO and
# $\log p(y)$ is *exactly* how far $q$ is from the posterior — which is why maximising the ELBO is
# approximate inference.


# %%
def guide_distribution(fit):
    """The trained guide q(w) as a torch distribution, from the fitted parameters."""
    p = fit.params
    if "scale_tril" in p:
        return dist.MultivariateNormal(p["loc"], scale_tril=p["scale_tril"])
    return dist.MultivariateNormal(p["loc"], torch.diag(p["scale"] ** 2))


def log_joint(w):
    """log p(y, w) for a batch of w [n, 2]."""
    prior = dist.Normal(0.0, s0).log_prob(w).sum(-1)
    return prior + dist.Normal(w @ X.T, sigma).log_prob(y).sum(-1)


rows = []
for name in ("SVI mean-field", "SVI full-rank"):
    q = guide_distribution(fits[name])
    w = q.sample((100_000,))
    log_ratio = log_joint(w) - q.log_prob(w)
    elbo, se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(w.shape[0])
    kl = torch.distributions.kl_divergence(q, posterior).item()
    rows.append((name, elbo, kl))
    print(
        f"{name:15s} ELBO = {elbo:8.4f} (± {se:.4f})   KL(q||p) = {kl:7.4f}   "
        f"ELBO + KL = {elbo + kl:8.4f}   log p(y) = {log_evidence.item():8.4f}"
    )
print(f"Laplace's own estimate of log p(y): {fits['Laplace'].diagnostics['log_evidence']:.4f}")
rho = (S_N[0, 1] / S_N.diag().prod().sqrt()).item()
print(f"smallest KL any mean-field Gaussian can reach: -1/2 log(1 - rho^2) = {-0.5 * math.log(1 - rho**2):.4f}")

# %% [markdown]
# Both sums hit $\log p(y)$ within Monte Carlo error, although the two guides split it very differently.
# The mean-field gap has a closed form too: the best factorised Gaussian for a 2-D Gaussian with
# correlation $\rho$ is at $\mathrm{KL} = -\frac12 \log(1 - \rho^2)$ from it, here
# about 1.49 (printed above) — no mean-field fit can do better.
# The Laplace fit's estimate of the evidence, $\log p(y, w^*) + \frac d2 \log 2\pi - \frac12 \log\det H$, is
# exact here because the log-posterior is quadratic.
#
# **Loss traces.** SVI minimises $-\mathrm{ELBO}$, so each trace (`inference.plot_losses`) levels off at
# $-\log p(y) + \mathrm{KL}(q^* \,\|\, p)$: on the dashed line for a guide family that contains the
# posterior, above it for one that does not (dotted lines: $-\mathrm{ELBO}$ of the trained guides). No amount
# of optimisation closes the mean-field gap. The traces are noisy because each step uses a one-sample
# estimate of the ELBO.

# %%
svi_fits = {k: fits[k] for k in ("SVI mean-field", "SVI full-rank")}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
inference.plot_losses(svi_fits, ax=axes[0], yscale="log", title="loss per step (one-sample estimates)")
window = 100
for i, (name, fit) in enumerate(svi_fits.items()):
    smooth = np.convolve(fit.losses, np.ones(window) / window, mode="valid")
    axes[1].plot(np.arange(window, fit.losses.size + 1), smooth, color=f"C{i}", label=name)
    axes[1].axhline(-rows[i][1], color=f"C{i}", ls=":", lw=1)
for ax in axes:
    ax.axhline(-log_evidence.item(), color="k", ls="--", lw=1, label=r"$-\log p(y)$")
axes[1].set_ylim(-log_evidence.item() - 1, -log_evidence.item() + 8)
axes[1].set(xlabel="step", title=f"running mean over {window} steps")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. EM and variational EM: learning parameters of the model
#
# So far the model had no free parameters. When it has some, $\theta$, the ELBO $F(q, \theta)$ can be
# maximised over both, in turns (MATH.md §1):
#
# * **E-step**: maximise $F$ over $q$ with $\theta$ fixed. In **EM**, $q$ is the exact posterior
#   $p(z \mid x; \theta_t)$, so after the E-step the bound is tight, $F = \log p(x; \theta_t)$.
# * **M-step**: maximise $F$ over $\theta$ with $q$ fixed, i.e. maximise
#   $Q(\theta, \theta_t) = \mathbb E_{q}[\log p(x, z; \theta)]$.
#
# Each step can only raise $F$, and in EM the log-likelihood never goes down. **Variational EM** uses a
# restricted $q$ instead (a guide), so it maximises a bound.
#
# **EM is variational EM with the exact E-step.** For a Gaussian mixture, the assignments $z_n$ are
# discrete; `inference.variational_em(model, None, X)` computes their exact posterior by enumeration and
# solves the M-step numerically, while `zoo.GaussianMixture` runs the closed-form EM updates. From the
# same start they trace the same log-likelihood (notebook 2 looks at EM for mixtures in depth).

# %%
mixture = make_mixture(n_samples=300, n_components=3, seed=0)
closed_form = zoo.GaussianMixture(3, init="random", seed=1, tol=0, max_iter=20).fit(mixture.X)
with warnings.catch_warnings():
    # tol=0 runs exactly 20 rounds, to compare the traces step by step: "not settled" is expected
    warnings.simplefilter("ignore", inference.ConvergenceWarning)
    numerical = inference.variational_em(
        zoo.GaussianMixture(3, init="random", seed=1).to_pyro(mixture.X).model,
        None,
        mixture.X,
        max_iter=20,
        tol=0,
        max_plate_nesting=1,
        progress=False,
    )
em_trace = closed_form.log_likelihood_trace_ * mixture.X.shape[0]  # per point -> total
vem_trace = -numerical.losses
print("largest difference between the two traces:", np.abs(em_trace - vem_trace).max())
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(em_trace, "o-", ms=4, label="closed-form EM (zoo.GaussianMixture)")
ax.plot(vem_trace, "x--", ms=6, label="variational EM, exact E-step (inference)")
ax.set(xlabel="iteration", ylabel=r"$\log p(X;\theta_t)$", title="EM never decreases the log-likelihood")
ax.legend()
plt.show()

# %% [markdown]
# **Variational EM with a guide: empirical Bayes.** Back to the regression, now with the prior scale $s_0$
# as a parameter $\theta$ to learn. With the full-rank guide the E-step can reach the exact posterior, so
# variational EM maximises the evidence $\log p(y; s_0)$ over $s_0$ ("type-II maximum likelihood"). The
# evidence is known in closed form for every $s_0$; the estimate should sit near its maximum (up to the
# noise of stochastic E- and M-steps).


# %%
def model_eb(X, y):
    prior_scale = pyro.param("prior_scale", torch.tensor(1.0), constraint=constraints.positive)
    w = pyro.sample("w", dist.Normal(torch.zeros(2), prior_scale).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


rounds = 30 if QUICK else 80
with warnings.catch_warnings():
    # tol=0: a fixed number of rounds, whose end the figure shows; "not settled" is expected
    warnings.simplefilter("ignore", inference.ConvergenceWarning)
    eb = inference.variational_em(
        model_eb,
        full_rank,
        X,
        y,
        max_iter=rounds,
        e_steps=30,
        m_steps=30,
        lr=0.05,
        m_step="adam",
        elbo="trace",
        tol=0,
        progress=False,
    )
grid = np.geomspace(0.1, 10, 200)
evidence = [
    dist.MultivariateNormal(torch.zeros(N), sigma**2 * torch.eye(N) + s**2 * X @ X.T).log_prob(y).item() for s in grid
]
s_hat = eb.params["prior_scale"].item()
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(grid, evidence, label=r"$\log p(y; s_0)$ (closed form)")
ax.axvline(grid[np.argmax(evidence)], color="k", ls="--", lw=1, label=f"its maximum, {grid[np.argmax(evidence)]:.2f}")
ax.axvline(s_hat, color="C1", lw=1.5, label=f"variational EM: $s_0$ = {s_hat:.2f}")
ax.set(xlabel="prior scale $s_0$", ylabel="log evidence", title="empirical Bayes by variational EM")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5. When to trust which
#
# In practice there is no closed form to compare with. Two habits help:
#
# 1. **Compare against NUTS** where it is affordable: `inference.compare` tabulates, per variable, the
#    error of each method's mean in units of the reference sd, and the ratio of sds (< 1: over-confident).
# 2. **Ask the approximation itself, with PSIS.** Draw $w_s \sim q$ and form the importance weights
#    $r_s = p(y, w_s) / q(w_s)$. If $q$ were the posterior, all $r_s$ would be equal ($= p(y)$). Pareto-smoothed
#    importance sampling (Yao et al. 2018, "Yes, but did it work?") fits a generalised Pareto distribution
#    to the largest weights; its shape $\hat k$ measures how heavy their tail is:
#    $\hat k < 0.5$: $q$ is close to the posterior (importance sampling would fix the rest);
#    $0.5 \le \hat k < 0.7$: usable with care; $\hat k \ge 0.7$: do not trust $q$. It needs only the
#    unnormalised $p(y, w)$, so it works on any model.

# %%
table = inference.compare({k: v for k, v in fits.items() if k != "exact"}, reference="NUTS", num_samples=DRAWS)
table.round(3)

# %%
inference.summarize(table).round(3)

# %% [markdown]
# The mean-field guide is over-confident (sd ratio well below 1), and $\hat k$ flags it although PSIS
# never saw the exact answer: an over-narrow $q$ misses the tails of the posterior, so the rare draws
# that land there get huge weights. (For Gaussians one can work it out: along the posterior's long axis
# the weights grow like a Pareto tail with $k = 1 - s_q^2/s_p^2$, close to 1 here; the estimate from a
# few hundred draws is noisy but lands well above 0.7.) The full-rank guide passes: its $\hat k$ is small
# or even negative (bounded weights: $q$ is at least as wide as the posterior everywhere). Laplace is exact
# on this Gaussian posterior (all weights equal: $\hat k = 0$). NUTS has no $q$ to test; its own
# diagnostics are $\hat R$ (chains agree: close to 1), the effective sample size and divergences:

# %%
nuts = fits["NUTS"]
print(
    "R-hat",
    nuts.diagnostics["r_hat"]["w"].round(3),
    " ESS",
    nuts.diagnostics["ess_bulk"]["w"].round(0),
    " divergences",
    nuts.diagnostics["num_divergences"],
)

# %% [markdown]
# The importance weights themselves show the difference: for the full-rank guide they cluster around
# $p(y)$; for the mean-field one a few draws carry almost all the weight.

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.5))
for i, name in enumerate(["SVI mean-field", "SVI full-rank"]):
    log_w = fits[name].log_weights(DRAWS, 0)
    ax.hist(log_w - log_evidence.item(), bins=40, alpha=0.6, color=f"C{i}", label=name)
ax.axvline(0, color="k", ls="--", lw=1, label=r"$\log p(y)$")
ax.set(
    xlabel=r"$\log p(y, w_s) - \log q(w_s) - \log p(y)$",
    ylabel="draws",
    title="log importance weights, relative to the evidence",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Take-aways.**
#
# | method | what it gives | trust it when |
# |---|---|---|
# | EM | point estimate of $\theta$, exact E-step | the posterior of $z$ is tractable (mixtures, HMMs) |
# | variational EM | $\theta$ and an approximate $q(z)$ | the guide family is rich enough (ELBO ≈ log-likelihood) |
# | SVI | a guide $q$ by stochastic gradients; scales to big data and amortised guides | $\hat k < 0.7$; compare a richer guide |
# | Laplace | a Gaussian at the mode, almost free | the posterior is unimodal and near-Gaussian (check $\hat k$) |
# | NUTS | exact samples, slowest | always the reference; check $\hat R$, ESS, divergences |
#
# The ELBO is a bound, and its gap is the KL from the posterior: a better ELBO means a better $q$ *for
# the same model*, but the ELBO alone never tells how good $q$ is — $\hat k$ and a reference do.
