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
# # 2. Gaussian mixtures and EM
#
# **What this notebook teaches.** The expectation–maximisation (EM) algorithm, seen on its classic use:
# fitting a mixture of Gaussians to points in the plane. You will
#
# 1. write the E-step and the M-step yourself in a few lines of PyTorch and watch them, iteration by
#    iteration: points coloured by their responsibilities, components drawn as covariance ellipses;
# 2. see why the log-likelihood never goes down (the E-step makes a lower bound tight, the M-step raises
#    it), and check it numerically against `zoo.GaussianMixture`;
# 3. meet EM's hazards: local optima from bad starts and their cure (restarts, k-means++ seeding), and
#    components collapsing onto a single point, where the likelihood is unbounded, and the regulariser
#    that prevents it (`reg_covar`).
#
# The maths is in MATH.md §1–2 of the project.

# %%
# %matplotlib inline
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse

import inference
import zoo
from inference import ConvergenceWarning
from zoo.data import make_mixture

QUICK = os.environ.get("ZOO_NOTEBOOK_QUICK") == "1"  # the test suite runs a smaller version
RESTARTS = 20 if QUICK else 100  # seeds per initialisation scheme in section 4
torch.set_default_dtype(torch.float64)
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The model
#
# A mixture of $K$ Gaussians draws each point in two stages: first a component
# $z_n \sim \mathrm{Categorical}(\pi)$, then the point $x_n \mid z_n = k \sim \mathcal N(\mu_k, \Sigma_k)$.
# The parameters are $\theta = (\pi, \mu, \Sigma)$; the assignments $z_n$ are latent. Summing them out,
#
# $$\log p(X; \theta) = \sum_n \log \sum_k \pi_k\, \mathcal N(x_n; \mu_k, \Sigma_k).$$
#
# The log of a sum has no closed-form maximiser. EM goes around it by alternating two easy problems:
#
# * **E-step** (posterior of $z$ at the current $\theta_t$): the *responsibilities*
#   $$r_{nk} = p(z_n = k \mid x_n; \theta_t)
#   = \frac{\pi_k \mathcal N(x_n; \mu_k, \Sigma_k)}{\sum_j \pi_j \mathcal N(x_n; \mu_j, \Sigma_j)},$$
#   computed in log space (log-sum-exp) so that far-away points do not underflow.
# * **M-step** (weighted maximum likelihood, as if the soft assignments were data):
#   $$N_k = \sum_n r_{nk},\quad \pi_k = \frac{N_k}{N},\quad \mu_k = \frac{1}{N_k}\sum_n r_{nk} x_n,\quad
#   \Sigma_k = \frac{1}{N_k}\sum_n r_{nk}(x_n - \mu_k)(x_n - \mu_k)^\top + \lambda I.$$
#
# ($\lambda$ is a small regulariser, scikit-learn's `reg_covar`; section 5 explains it.) In code:


# %%
def e_step(X, weights, means, covariances):
    """Responsibilities r [N, K] and the log-likelihood log p(X; θ)."""
    log_joint = weights.log() + torch.distributions.MultivariateNormal(means, covariances).log_prob(X[:, None, :])
    log_px = torch.logsumexp(log_joint, dim=1)  # log p(x_n) [N]
    return (log_joint - log_px[:, None]).exp(), log_px.sum().item()


def m_step(X, r, reg_covar=1e-6):
    """(π [K], μ [K, D], Σ [K, D, D]) maximising E_r[log p(X, z; θ)]."""
    Nk = r.sum(0)
    means = r.T @ X / Nk[:, None]
    diff = X[:, None, :] - means  # [N, K, D]
    covariances = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / Nk[:, None, None]
    return Nk / X.shape[0], means, covariances + reg_covar * torch.eye(X.shape[1])


# %% [markdown]
# ## 2. E and M, step by step
#
# Three clusters, and a deliberately poor start: all three components begin inside one cluster, with the
# covariance of the whole data set.

# %%
data = make_mixture(n_samples=400, n_components=3, seed=0)
X = data.X
K = 3
start_means = X[data.labels == 0][:3].clone()  # three points of the same cluster
start_weights = torch.full((K,), 1 / K)
start_covariances = torch.cov(X.T).expand(K, 2, 2).clone()

COLOURS = np.array([[0.85, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.3, 0.9]])


def draw_mixture(ax, X, r, weights, means, covariances, title):
    """Points coloured by their responsibilities (a mix of the component colours); 1- and 2-sd ellipses."""
    ax.scatter(X[:, 0], X[:, 1], c=np.clip(r.numpy() @ COLOURS[: r.shape[1]], 0, 1), s=6)
    for k in range(means.shape[0]):
        vals, vecs = np.linalg.eigh(covariances[k].numpy())
        angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
        for n_sd in (1, 2):
            ax.add_patch(
                Ellipse(
                    means[k].numpy(),
                    2 * n_sd * np.sqrt(vals[-1]),
                    2 * n_sd * np.sqrt(vals[0]),
                    angle=angle,
                    fill=False,
                    lw=1.5 if n_sd == 1 else 0.7,
                    color=COLOURS[k % len(COLOURS)],
                )
            )
        ax.plot(*means[k].numpy(), "x", color="k", ms=7)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")


theta = (start_weights, start_means, start_covariances)
history = []  # (θ_t, r_t, log p(X; θ_t), F(q_t, θ_{t+1}))
for t in range(31):
    r, loglik = e_step(X, *theta)  # E: q_t = p(z | X; θ_t), bound tight
    new_theta = m_step(X, r)  # M: θ_{t+1} maximises F(q_t, θ)
    w, mu, cov = new_theta  # F(q_t, θ_{t+1}) = E_q[log p(X, z; θ_{t+1})] + H[q_t]
    log_joint = w.log() + torch.distributions.MultivariateNormal(mu, cov).log_prob(X[:, None, :])
    bound = (r * log_joint).sum().item() - (r * r.clamp_min(1e-300).log()).sum().item()
    history.append((theta, r, loglik, bound))
    theta = new_theta

shown = [0, 1, 2, 4, 10, 30]
fig, axes = plt.subplots(2, 3, figsize=(13, 8.5), sharex=True, sharey=True)
for ax, t in zip(axes.flat, shown):
    (w, mu, cov), r, loglik, _ = history[t]
    draw_mixture(ax, X, r, w, mu, cov, f"iteration {t}: log p(X) = {loglik:.1f}")
fig.tight_layout()
plt.show()

# %% [markdown]
# Read each panel as "E-step at the drawn $\theta_t$": the colour of a point is how much each component
# claims it. At the start the three components sit on top of each other and share every point; the
# M-step moves each component to the weighted mean and spread of the points it claims, the next E-step
# re-assigns the points, and within a few iterations the components have found the three clusters.
# The late iterations only polish the shapes.
#
# The hand-written steps are the same algorithm as `zoo.GaussianMixture` (which runs them as two matrix
# products on cached features, fast enough for millions of points): from the same start, the fitted
# parameters and the log-likelihood trace agree.

# %%
gmm = zoo.GaussianMixture(
    K, init=start_means, weights_init=start_weights, covariances_init=start_covariances, max_iter=30, tol=0
).fit(X)
ours = np.array([h[2] for h in history])
print("largest difference of the means after 30 iterations:", (gmm.means_ - history[30][0][1]).abs().max().item())
print(
    "largest difference of the log-likelihood traces:   ", np.abs(gmm.log_likelihood_trace_ * X.shape[0] - ours).max()
)

# %% [markdown]
# ## 3. Why the log-likelihood never goes down
#
# For any distribution $q(z)$ over the assignments (MATH.md (1.1)),
#
# $$\log p(X; \theta) = F(q, \theta) + \mathrm{KL}\bigl(q(z) \,\|\, p(z \mid X; \theta)\bigr),\qquad
# F(q, \theta) = \mathbb E_q[\log p(X, z; \theta)] + H[q].$$
#
# * The E-step sets $q_t = p(z \mid X; \theta_t)$: the KL is 0, the bound touches the log-likelihood,
#   $F(q_t, \theta_t) = \log p(X; \theta_t)$.
# * The M-step maximises $F(q_t, \theta)$ over $\theta$ (the entropy does not depend on $\theta$; that is
#   the M-step above): $F(q_t, \theta_{t+1}) \ge F(q_t, \theta_t)$.
# * And $\log p(X; \theta_{t+1}) \ge F(q_t, \theta_{t+1})$ because the KL is never negative.
#
# So $\log p(X; \theta_{t+1}) \ge F(q_t, \theta_{t+1}) \ge \log p(X; \theta_t)$: a staircase that only
# climbs (Dempster, Laird and Rubin 1977). Below, the staircase of the run above: E-steps jump up to the
# log-likelihood, M-steps climb the bound.

# %%
bounds = np.array([h[3] for h in history])
stairs_x = np.ravel([[t, t + 0.5] for t in range(len(history) - 1)])
stairs_y = np.ravel([[ours[t], bounds[t]] for t in range(len(history) - 1)])
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].plot(ours, "o-", ms=3, label=r"$\log p(X; \theta_t)$ (after the E-step)")
axes[0].plot(np.arange(len(bounds)) + 0.5, bounds, "s", ms=3, label=r"$F(q_t, \theta_{t+1})$ (after the M-step)")
axes[0].set(xlabel="iteration t", ylabel="log-likelihood", title="EM climbs")
axes[0].legend(fontsize=8)
axes[1].plot(stairs_x[:12], stairs_y[:12], "k-", lw=0.8)
axes[1].plot(stairs_x[:12:2], stairs_y[:12:2], "o", label="E-step: bound made tight")
axes[1].plot(stairs_x[1:12:2], stairs_y[1:12:2], "s", label="M-step: bound maximised")
axes[1].set(xlabel="iteration", title="the first six iterations, half-step by half-step")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
print("smallest increase of log p(X; θ) per iteration:", np.diff(ours).min(), "(negative only by round-off)")
print(
    "every log p(θ_t) <= F(q_t, θ_t+1) <= log p(θ_t+1):",
    bool(np.all(ours[:-1] <= bounds[:-1] + 1e-9) and np.all(bounds[:-1] <= ours[1:] + 1e-9)),
)

# %% [markdown]
# ## 4. Local optima, and the cure
#
# Climbing never down does not mean reaching the top: EM converges to a *local* maximum, or a saddle,
# of the likelihood, and which one depends on the start. With six clusters, a random start (K data points
# drawn at random as the first means) often puts two seeds in one cluster and none in another; EM then
# settles with one component covering two clusters and two components splitting one, and cannot get
# out — moving a component across empty space would lower the likelihood on the way.
#
# Two cures, which combine:
#
# * **restarts** (`n_init`): run EM from several starts and keep the highest likelihood;
# * **k-means++ seeding** (`init="kmeans++"`, the default): pick the first seed at random and each next
#   one with probability proportional to its squared distance from the seeds so far, so the seeds spread
#   over the clusters.
#
# Below: the final log-likelihood per point of many single runs of each scheme, and what a bad local
# optimum looks like.

# %%
six = make_mixture(n_samples=500, n_components=6, separation=7.0, seed=0)
runs = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for init in ("random", "kmeans++"):
        runs[init] = [
            zoo.GaussianMixture(6, init=init, seed=s, max_iter=300, tol=1e-6).fit(six.X) for s in range(RESTARTS)
        ]
best = max((g for fits in runs.values() for g in fits), key=lambda g: g.lower_bound_)
worst = min(runs["random"], key=lambda g: g.lower_bound_)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
edges = np.linspace(min(g.lower_bound_ for g in runs["random"]) - 0.02, best.lower_bound_ + 0.02, 30)
for i, (init, fits) in enumerate(runs.items()):
    axes[0].hist([g.lower_bound_ for g in fits], bins=edges, alpha=0.6, color=f"C{i}", label=init)
axes[0].axvline(best.lower_bound_, color="k", ls="--", lw=1, label="best found")
axes[0].set(xlabel="final log-likelihood per point", ylabel="runs", title=f"{RESTARTS} single starts each")
axes[0].legend(fontsize=8)
COLOURS = plt.get_cmap("tab10")(np.arange(6))[:, :3]
for ax, g, title in ((axes[1], worst, "worst random start"), (axes[2], best, "best")):
    draw_mixture(
        ax,
        six.X,
        g.predict_proba(six.X),
        g.weights_,
        g.means_,
        g.covariances_,
        f"{title}: {g.lower_bound_:.3f} per point",
    )
fig.tight_layout()
plt.show()

# %%
for init in ("random", "kmeans++"):
    lls = np.array([g.lower_bound_ for g in runs[init]])
    print(f"{init:9s}: {np.mean(lls > best.lower_bound_ - 1e-3):.0%} of single runs reach the best optimum")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    restarted = zoo.GaussianMixture(6, init="kmeans++", n_init=10, seed=0, max_iter=300, tol=1e-6).fit(six.X)
print(f"k-means++ with n_init=10: {restarted.lower_bound_:.4f} per point (best seen: {best.lower_bound_:.4f})")

# %% [markdown]
# If a fraction $p$ of single starts reaches the best optimum, $n$ independent restarts miss it with
# probability $(1 - p)^n$: better seeding raises $p$, restarts raise $n$.
#
# ## 5. Collapse, and the regulariser
#
# The mixture likelihood is **unbounded**. Centre one component on a single data point $x_m$ and shrink
# its covariance to $s^2 I$: that point's density contains the term $\pi_k \mathcal N(x_m; x_m, s^2 I)
# = \pi_k (2\pi s^2)^{-D/2} \to \infty$ as $s \to 0$, while the other points keep a finite likelihood
# from the other components. The maximum-likelihood "solution" is a spike: useless, and numerically a
# singular covariance.

# %%
w3, mu3, cov3 = history[30][0]
spike_at = X[0]
scales = np.geomspace(1e-4, 1, 60)
lls = []
for s in scales:
    weights = torch.cat([w3 * 0.99, torch.tensor([0.01])])
    means = torch.cat([mu3, spike_at[None]])
    covs = torch.cat([cov3, (s**2 * torch.eye(2))[None]])
    lls.append(e_step(X, weights, means, covs)[1])
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(scales, lls)
ax.axhline(history[30][2], color="k", ls="--", lw=1, label="the 3-component fit")
ax.invert_xaxis()
ax.set(
    xlabel="sd s of a 4th component sitting on one data point",
    ylabel="log p(X)",
    title="the likelihood grows without bound as s → 0",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# EM can walk into such a spike by itself. Below, the data set has three identical copies of one point
# (a sensor stuck on a value, a duplicated row), and a 4th component starts near them. Without a
# regulariser ($\lambda = 0$) its covariance shrinks to exactly zero and `zoo.GaussianMixture` stops with
# an error that says what happened. With $\lambda > 0$ every covariance is at least $\lambda I$, so the
# likelihood is bounded; the component may still be small, but the fit is finite. (The panels are zoomed
# on the stuck point; the 4th component is the small ellipse around it.)

# %%
stuck = torch.cat([X, X[:1].repeat(3, 1)])
settings = dict(
    init=torch.cat([data.means, X[:1]]),
    weights_init=[0.3, 0.3, 0.3, 0.1],
    covariances_init=torch.cat([data.covariances, 0.01 * torch.eye(2)[None]]),
    max_iter=100,
    tol=0,
)
try:
    zoo.GaussianMixture(4, reg_covar=0.0, **settings).fit(stuck)
except inference.InvalidInputError as e:
    print("reg_covar=0:", e)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax, reg in zip(axes, (1e-6, 1e-3, 1e-1)):
    g = zoo.GaussianMixture(4, reg_covar=reg, **settings).fit(stuck)
    sd = g.covariances_[3].diagonal().sqrt().max().item()
    draw_mixture(
        ax,
        stuck,
        g.predict_proba(stuck),
        g.weights_,
        g.means_,
        g.covariances_,
        f"reg_covar={reg:g}: 4th component sd {sd:.3f}\nlog p per point {g.lower_bound_:.4f}",
    )
    ax.plot(*X[0].numpy(), "k*", ms=12, label="the stuck point (3 copies)")
    ax.set(xlim=(X[0, 0] - 1.5, X[0, 0] + 1.5), ylim=(X[0, 1] - 1.5, X[0, 1] + 1.5))
    ax.legend(fontsize=8, loc="upper right")
    print(
        f"reg_covar={reg:g}: largest drop of the mean log-likelihood between iterations "
        f"{max(-np.diff(g.log_likelihood_trace_).min(), 0):.1e}"
    )
fig.tight_layout()
plt.show()

# %% [markdown]
# Two things to notice. The smaller $\lambda$, the higher the likelihood — of a worse model: likelihood
# alone rewards the spike. And with a large $\lambda$ the log-likelihood trace may dip slightly (the
# drops printed above are far beyond round-off for $\lambda = 0.1$): the
# regularised M-step adds $\lambda I$ *after* maximising, so it no longer maximises $F(q_t, \theta)$
# exactly, and the guarantee of section 3 holds only up to that. (The principled version is a prior on
# $\Sigma_k$ and a MAP M-step: then the log-*posterior* never goes down; `PyroMixture.bayes_model` puts
# such priors on all parameters for the Bayesian methods of notebook 1.)
#
# **Take-aways.** EM alternates a tight lower bound (E) and its maximisation (M); the likelihood climbs
# monotonically, but only to a local optimum, so seed well (k-means++) and restart; the mixture likelihood
# is unbounded, so always regularise the covariances (or put a prior on them); and choose $K$ on held-out
# likelihood or a criterion such as BIC (`gmm.bic(X)`), never on the training likelihood, which only grows
# with $K$.
