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
# # 5. Optimisation for training
#
# **What this notebook teaches.** Training a model with SVI is stochastic optimisation of the ELBO. This
# notebook shows, on small problems you can see whole:
#
# 1. the optimisers `inference.svi` offers — SGD, momentum, Nesterov, RMSprop, Adam — on the same ELBO;
# 2. the hazards of a loss landscape: ill-conditioning, saddle points, plateaus (vanishing gradients) and
#    cliffs (exploding gradients), and how momentum, adaptive step sizes and gradient clipping answer them;
# 3. minibatches: the loss of a batch of $B$ points, scaled by $N/B$, is an unbiased estimate of the
#    full-data loss, and its noise shrinks like $1/B$;
# 4. early stopping on a held-out ELBO: the training loss is only a surrogate for generalisation.
#
# The maths is in MATH.md §5 of the project; every optimiser is the standard PyTorch one
# (`inference.optim`).

# %%
# %matplotlib inline
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

import inference
from inference import ConvergenceWarning
from inference.optim import make_optimizer

QUICK = os.environ.get("ZOO_NOTEBOOK_QUICK") == "1"  # the test suite runs a smaller version
STEPS = 300 if QUICK else 2000
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. Five optimisers on one ELBO
#
# A Bayesian linear regression $y = Xw + \varepsilon$, $w \sim \mathcal N(0, 10^2 I)$, fitted with a
# mean-field normal guide. The ELBO is
# $F(q) = \mathbb E_q[\log p(y, w \mid X)] - \mathbb E_q[\log q(w)]$; each step follows a
# one-sample reparameterised estimate of its gradient. The features are correlated, so the posterior is
# an elongated ellipse: a badly conditioned problem.
#
# * **SGD** steps along $-\eta g$: the step that suits the steep direction is far too short for the
#   shallow one.
# * **Momentum** accumulates a velocity $v \leftarrow \mu v + g$ that keeps moving along consistent
#   directions and cancels oscillations; **Nesterov** evaluates the gradient at the look-ahead point.
# * **RMSprop** and **Adam** divide by a running root mean square of each coordinate's gradient, so
#   every coordinate gets a step of about $\eta$ whatever its curvature.

# %%
g = torch.Generator().manual_seed(1)
N, D = 200, 5
X = torch.randn(N, D, generator=g)
X[:, 1:] += 2.0 * X[:, :1]  # strongly correlated features
w_true = torch.tensor([1.0, -0.5, 0.25, 0.0, 2.0])
y = X @ w_true + 0.5 * torch.randn(N, generator=g)


def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


settings = {"sgd": 2e-5, "momentum": 2e-5, "nesterov": 2e-5, "rmsprop": 2e-2, "adam": 5e-2}
with warnings.catch_warnings():
    # this section is about the optimisers; how far a mean-field guide is from this correlated posterior
    # (which each fit's verdict points out) is notebook 6's subject
    warnings.simplefilter("ignore", ConvergenceWarning)
    fits = {
        name: inference.svi(
            regression, AutoNormal(regression), X, y, steps=STEPS, lr=lr, optimizer=name, progress=False
        )
        for name, lr in settings.items()
    }
fig = inference.plot_losses(fits)
fig.axes[0].set_title("negative ELBO on the same regression, five optimisers")
fig

# %% [markdown]
# The exact posterior mean is $(X^\top X/\sigma^2 + I/100)^{-1} X^\top y / \sigma^2$; the distance of
# each fit's guide mean from it:

# %%
exact = torch.linalg.solve(X.T @ X / 0.25 + torch.eye(D) / 100, X.T @ y / 0.25)
for name, fit in fits.items():
    err = (fit.params["AutoNormal.locs.w"] - exact).norm().item()
    print(f"{name:9s} final loss {fit.losses[-20:].mean():10.1f}   |mean - exact| = {err:.3f}")

# %% [markdown]
# SGD's learning rate is capped by the steepest direction (a larger one diverges — try it: the loop
# stops with an error naming the step), so it crawls along the shallow ones. Momentum helps; the
# adaptive methods converge fastest here.
#
# ## 2. The hazards, seen on two-dimensional losses
#
# The same optimisers, now on hand-made losses $f(\theta_1, \theta_2)$ so that the path can be drawn.


# %%
def run(loss_fn, start, name, lr, steps=150, clip=None):
    theta = torch.tensor(start, requires_grad=True)
    opt = make_optimizer(name, [theta], lr=lr)
    path = [theta.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(theta).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([theta], clip)
        opt.step()
        path.append(theta.detach().clone())
    return torch.stack(path).numpy()


def contour(ax, loss_fn, lim):
    a = np.linspace(*lim[0], 200)
    b = np.linspace(*lim[1], 200)
    A, B = np.meshgrid(a, b)
    Z = loss_fn(torch.tensor(np.stack([A, B]), dtype=torch.float32)).numpy()
    ax.contour(A, B, Z, levels=30, cmap="Greys", linewidths=0.6)


def ill_conditioned(t):  # curvature 1 along θ1, 50 along θ2
    return 0.5 * t[0] ** 2 + 25.0 * t[1] ** 2


def saddle(t):  # a saddle at the origin, minima at θ2 = ±1
    return t[0] ** 2 + (t[1] ** 2 - 1.0) ** 2


def plateau_and_cliff(t):  # flat for θ1 < 0, a steep wall near θ1 = 2
    return -torch.sigmoid(3 * t[0]) + 0.5 * t[1] ** 2 + torch.relu(t[0] - 2.0) ** 3 * 50


fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
problems = [
    (
        "ill-conditioning",
        ill_conditioned,
        [-4.0, 1.0],
        ((-4.5, 1), (-1.2, 1.2)),
        {"sgd": 0.038, "momentum": 0.01, "adam": 0.2},
    ),
    ("saddle point", saddle, [1.5, 1e-4], ((-2, 2), (-1.5, 1.5)), {"sgd": 0.05, "nesterov": 0.02, "adam": 0.05}),
    (
        "plateau",
        plateau_and_cliff,
        [-3.0, 1.0],
        ((-3.5, 3), (-1.5, 1.5)),
        {"sgd": 0.5, "momentum": 0.5, "rmsprop": 0.05},
    ),
]
for ax, (title, f, start, lim, rates) in zip(axes, problems):
    contour(ax, f, lim)
    for name, lr in rates.items():
        path = run(f, start, name, lr)
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, label=f"{name} (lr={lr})")
    ax.plot(*start, "k*", ms=10)
    ax.set_title(title)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# * **Ill-conditioning**: SGD zig-zags across the steep valley; momentum smooths the zig-zag; Adam
#   rescales each coordinate.
# * **Saddle point**: started almost exactly on the ridge ($\theta_2 = 10^{-4}$), plain gradient descent
#   walks into the saddle at the origin, where the gradient vanishes, and lingers; the tiny unstable
#   component grows only geometrically. Gradient noise (minibatches) or momentum leaves sooner.
# * **Plateau**: the sigmoid's gradient is $\approx 0$ far to the left (vanishing gradient). SGD barely
#   moves; RMSprop divides by the tiny gradient's own size and walks off the plateau at constant speed.
#
# ### Cliffs and gradient clipping
# Near the wall at $\theta_1 = 2$ the gradient is huge. An unclipped step is thrown far away; clipping
# the gradient's norm to $c$ bounds every step by $\eta c$.

# %%
start = [2.3, 0.5]
wild = run(plateau_and_cliff, start, "sgd", 0.5, steps=3)
tame = run(plateau_and_cliff, start, "sgd", 0.5, steps=30, clip=1.0)
print("without clipping, after 3 steps:", wild[-1])
print("with clipping at 1.0, longest step:", np.linalg.norm(np.diff(tame, axis=0), axis=1).max())

# %% [markdown]
# In `inference.svi` the same rule is `clip_norm=c`: the whole gradient is rescaled when
# $\lVert g \rVert_2 > c$.
#
# ## 3. Minibatches: an unbiased, noisier gradient
#
# With `batch_size=B`, `inference.svi` feeds $B$ rows at a time and multiplies the log-likelihood of the
# sites in the data plate by $N/B$. The batch loss is then an unbiased estimate of the full-data loss;
# its variance shrinks like $1/B$. Below: the spread of the loss over steps of one epoch at fixed
# parameters, for several $B$ (a Delta guide and a vanishing learning rate keep the parameters fixed).
# Sampling without replacement adds the finite-population factor $(N-B)/(N-1)$: at $B = N$ the noise is 0.

# %%
with warnings.catch_warnings():
    # these runs only evaluate losses (a vanishing learning rate): their verdicts have nothing to judge
    warnings.simplefilter("ignore", ConvergenceWarning)
    full = inference.svi(
        regression, AutoDelta(regression), X, y, steps=1, lr=1e-12, optimizer="sgd", progress=False
    ).losses[0]
    rows = []
    for B in (10, 20, 50, 100):
        fit = inference.svi(
            regression,
            AutoDelta(regression),
            X,
            y,
            steps=(N // B) * 10,
            batch_size=B,
            lr=1e-12,
            optimizer="sgd",
            progress=False,
        )
        rows.append((B, fit.losses.mean(), fit.losses.std()))
        print(
            f"B={B:4d}: mean batch loss {fit.losses.mean():10.1f} (full data: {full:.1f}), sd {fit.losses.std():9.1f}"
        )
fig, ax = plt.subplots(figsize=(5, 3.5))
Bs, _, sds = map(np.array, zip(*rows))
ax.loglog(Bs, sds**2, "o-", label="variance of the batch loss")
ax.loglog(
    Bs,
    sds[0] ** 2 * Bs[0] / Bs * (N - Bs) / (N - Bs[0]),
    "k--",
    label=r"$\propto (N-B)/B$ (sampling without replacement)",
)
ax.set_xlabel("batch size B")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Early stopping on a held-out ELBO
#
# Training minimises the empirical loss, a surrogate for the real goal. A linear regression with more
# features (50) than training points (30), fitted by MAP with a weak prior, can interpolate the
# training data, noise included. Gradient descent from $w = 0$ first fits the directions the data
# determine well, then the noise: the held-out loss falls, reaches a minimum and rises again while the
# training loss keeps falling. `inference.svi(..., validation_data=..., patience=k)` evaluates the
# held-out loss every `eval_every` steps, stops after `k` evaluations without improvement and restores
# the best parameters.

# %%
from pyro.infer.autoguide import init_to_value

N2, D2 = 60, 50
X2 = torch.randn(N2, D2, generator=g)
w2 = torch.zeros(D2)
w2[:5] = torch.tensor([2.0, -1.5, 1.0, 0.5, -0.5])  # a few real effects among 50 features
y2 = X2 @ w2 + torch.randn(N2, generator=g)
train, held = slice(0, 30), slice(30, 60)


def wide_regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)


def from_zero():
    return AutoDelta(wide_regression, init_loc_fn=init_to_value(values={"w": torch.zeros(D2)}))


settings = dict(
    steps=300, lr=0.002, optimizer="sgd", validation_data=(X2[held], y2[held]), eval_every=2, progress=False
)
long = inference.svi(wide_regression, from_zero(), X2[train], y2[train], **settings)
with warnings.catch_warnings():
    # early stopping ends the run on purpose, before the training loss has settled
    warnings.simplefilter("ignore", ConvergenceWarning)
    stopped = inference.svi(wide_regression, from_zero(), X2[train], y2[train], patience=10, **settings)
fig, ax = plt.subplots(figsize=(6, 3.5))
steps, val = zip(*long.diagnostics["validation_losses"])
ax.plot(np.arange(1, len(long.losses) + 1), long.losses, lw=0.8, label="training loss")
ax.plot(steps, val, ".-", ms=3, label="held-out loss")
ax.axvline(stopped.diagnostics["stopped_at"], color="k", ls="--", label="early stop (patience 10)")
ax.axvline(stopped.diagnostics["best_step"], color="g", ls=":", label="best held-out loss")
ax.set_xscale("log")
ax.set_ylim(150, 320)
ax.set_xlabel("step")
ax.legend(fontsize=8)
plt.show()

# %%
print(
    "stopped at step",
    stopped.diagnostics["stopped_at"],
    "; best held-out loss at step",
    stopped.diagnostics["best_step"],
)
print("held-out loss: best", round(min(val), 1), " after all 300 steps", round(val[-1], 1))

# %% [markdown]
# **Take-aways.** Adaptive methods (Adam, RMSprop) are the robust default for SVI; momentum fixes much of
# SGD's trouble with ill-conditioning; clip gradients when the loss has cliffs (deep decoders, large
# learning rates); minibatches trade gradient noise for cost per step, with an unbiased full-data-scale
# loss; and the number of steps is itself a hyper-parameter, best chosen on held-out data.
