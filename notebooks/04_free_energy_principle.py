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
# # 4. The free-energy principle
#
# **What this notebook teaches.** The free-energy principle says that perception and action both
# minimise one quantity, the variational free energy $F$ (the negative ELBO of notebook 1). Following
# Buckley, Kim, McGregor and Seth (2017), on their thermostat-like agent, this notebook shows
#
# 1. how $F$ turns into the *Laplace-encoded energy* $E(\mu, \varphi)$, a sum of precision-weighted
#    squared prediction errors, once the recognition density is Gaussian (checked numerically);
# 2. **perception alone**: beliefs $\tilde\mu$ flow down $E$ and settle between what the agent senses
#    (20 degrees) and what it expects (4 degrees): at 12 with equal precisions;
# 3. **action**: the agent then changes the world so that its sensations fit its expectations, and the
#    temperature reaches 4;
# 4. **precisions** $1/\sigma$: who wins, the senses or the prior, and what happens when the agent trusts
#    one of them too much (a sweep).
#
# The maths is in MATH.md §4 of the project; the code is `zoo.fep` (a Pyro model for the generative
# density, and a batched simulation of the paper's Euler scheme).

# %%
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from zoo import fep

QUICK = os.environ.get("ZOO_NOTEBOOK_QUICK") == "1"  # the test suite runs a smaller version
RECORD = 20 if QUICK else 1  # keep every RECORD-th time step of the simulations
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. From $F$ to the Laplace-encoded energy
#
# An agent senses $\varphi$, caused by a hidden state $\vartheta$ of the world it cannot see. Its
# *generative density* (G-density) $p(\vartheta, \varphi)$ says how it believes sensations arise; its
# *recognition density* (R-density) $q(\vartheta)$, encoded by its brain state $\mu$, is its current guess
# about $\vartheta$. The variational free energy is
#
# $$F = \int q(\vartheta)\,\bigl[E(\vartheta, \varphi) + \ln q(\vartheta)\bigr]\,d\vartheta,
# \qquad E(\vartheta, \varphi) = -\ln p(\vartheta, \varphi),$$
#
# and $F = \mathrm{KL}(q \,\|\, p(\vartheta \mid \varphi)) - \ln p(\varphi)$: minimising $F$ over $q$ makes
# $q$ the Bayesian posterior (perception as inference), and its minimum is the surprise
# $-\ln p(\varphi)$.
#
# **The Laplace approximation.** Let $q = \mathcal N(\mu, \zeta)$. Expanding $E$ to second order
# around $\mu$,
#
# $$F \approx E(\mu, \varphi) + \tfrac12 E''(\mu)\,\zeta - \tfrac12 \ln(2\pi\zeta) - \tfrac12,$$
#
# (the last two terms are minus the entropy of $q$). Setting $\partial F / \partial\zeta = 0$ gives
# $\zeta^* = 1/E''(\mu)$, and then
#
# $$F = E(\mu, \varphi) - \tfrac12 \ln(2\pi \zeta^*).$$
#
# The variance is fixed by the curvature, so **all that is left to learn is $\mu$**, and to first
# order the agent only has to minimise $E(\mu, \varphi)$: the Laplace-encoded energy.
#
# A one-dimensional check. Prior belief $\vartheta \sim \mathcal N(v_p, \sigma_p)$ and sensation
# $\varphi \sim \mathcal N(\vartheta, \sigma_z)$ (variances, as in the paper). Then
# $E(\vartheta) = \frac{(\varphi - \vartheta)^2}{2\sigma_z} + \frac{(\vartheta - v_p)^2}{2\sigma_p}
# + \tfrac12\ln(2\pi\sigma_z) + \tfrac12\ln(2\pi\sigma_p)$ is quadratic, so the Laplace approximation is
# exact here. Below: $F$ of a Gaussian $q$ computed by Monte Carlo (no Taylor expansion), as a function
# of $\zeta$ at the optimal $\mu$, and as a function of $\mu$ at $\zeta^*$.

# %%
v_p, s_p, s_z, phi_obs = 4.0, 0.1, 0.1, 20.0


def energy_1d(theta):
    return (
        (phi_obs - theta) ** 2 / (2 * s_z)
        + (theta - v_p) ** 2 / (2 * s_p)
        + 0.5 * math.log(2 * math.pi * s_z)
        + 0.5 * math.log(2 * math.pi * s_p)
    )


eps = torch.randn(200_000, dtype=torch.float64)


def free_energy_mc(mu, zeta):
    """F = E_q[E(θ)] + E_q[ln q(θ)] for q = N(mu, zeta), by Monte Carlo."""
    theta = mu + math.sqrt(zeta) * eps
    return (energy_1d(theta).mean() - 0.5 * math.log(2 * math.pi * math.e * zeta)).item()


curvature = 1 / s_z + 1 / s_p  # E''(θ), the same everywhere
zeta_star = 1 / curvature
mu_star = (phi_obs / s_z + v_p / s_p) / curvature  # precision-weighted average = posterior mean
log_evidence = -0.5 * math.log(2 * math.pi * (s_z + s_p)) - (phi_obs - v_p) ** 2 / (2 * (s_z + s_p))

zetas = np.geomspace(zeta_star / 10, zeta_star * 10, 41)
mus = np.linspace(mu_star - 3, mu_star + 3, 41)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].semilogx(zetas, [free_energy_mc(mu_star, z) for z in zetas], label="F (Monte Carlo)")
axes[0].axvline(zeta_star, color="k", ls="--", label=r"$\zeta^* = 1/E''$")
axes[0].set(xlabel=r"variance $\zeta$ of $q$", ylabel="F", title=r"F over $\zeta$ at $\mu = \mu^*$")
axes[1].plot(mus, [free_energy_mc(m, zeta_star) for m in mus], label=r"F (Monte Carlo) at $\zeta^*$")
axes[1].plot(
    mus,
    energy_1d(torch.tensor(mus)) - 0.5 * math.log(2 * math.pi * zeta_star),
    "k:",
    label=r"$E(\mu) - \frac{1}{2} \ln 2\pi\zeta^*$",
)
axes[1].axhline(-log_evidence, color="C3", lw=0.8, label=r"surprise $-\ln p(\varphi)$")
axes[1].set(xlabel=r"belief $\mu$", title=r"F over $\mu$ at $\zeta = \zeta^*$")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
print(f"mu* = {mu_star:.3f}  (precision-weighted average of phi = {phi_obs} and v_p = {v_p})")
print(f"F at (mu*, zeta*), Monte Carlo: {free_energy_mc(mu_star, zeta_star):.4f}")
print(
    f"E(mu*) - 1/2 ln(2 pi zeta*):    {energy_1d(torch.tensor(mu_star)) - 0.5 * math.log(2 * math.pi * zeta_star):.4f}"
)
print(f"surprise -ln p(phi):            {-log_evidence:.4f}   (KL(q || posterior) = 0 at the optimum)")

# %% [markdown]
# The three numbers agree: at its optimum the Gaussian $q$ *is* the posterior, $F$ equals the surprise,
# and the optimal belief is the **precision-weighted average** of sensation and prior,
# $\mu^* = (\varphi/\sigma_z + v_p/\sigma_p) / (1/\sigma_z + 1/\sigma_p)$ — 12 for 20 and 4 with equal
# precisions. Keep that number in mind.
#
# ## 2. The agent's G-density in generalized coordinates
#
# The agent of the paper lives in a world where the temperature at position $\vartheta$ is
# $T(\vartheta) = T_0/(\vartheta^2 + 1)$, $T_0 = 100$; it starts at $\vartheta = 2$ (20 degrees) and
# *desires* 4 degrees. Its beliefs are not only about the temperature but about its motion: in
# *generalized coordinates* $\tilde\mu = (\mu, \mu', \mu'')$ and $\tilde\varphi = (\varphi, \varphi')$.
# Its G-density is $\tilde\varphi = \tilde g(\tilde\mu) + \tilde z$ (it senses the temperature it
# believes in, $g(\mu) = \mu$) and $D\tilde\mu = \tilde f(\tilde\mu) + \tilde w$ with the prior dynamics
# $f(\mu) = -\mu + T_{desire}$ (it believes temperature relaxes towards what it desires). With Gaussian
# noises of variances $\sigma_z[n], \sigma_w[n]$,
#
# $$E(\tilde\mu, \tilde\varphi) = \sum_n \frac{\varepsilon_z[n]^2}{2\sigma_z[n]}
# + \sum_n \frac{\varepsilon_w[n]^2}{2\sigma_w[n]} + \text{const},\qquad
# \varepsilon_z[n] = \varphi[n] - g[n],\quad \varepsilon_w[n] = \mu[n+1] - f[n],$$
#
# concretely $\varepsilon_{z0} = \varphi - \mu$, $\varepsilon_{z1} = \varphi' - \mu'$,
# $\varepsilon_{w0} = \mu' + \mu - T_{desire}$, $\varepsilon_{w1} = \mu'' + \mu'$:
# **precision-weighted prediction errors**. `fep.GenerativeModel` writes this density as a Pyro model,
# so $E$ is minus Pyro's log joint (up to the $\ln 2\pi$ constants that MATH.md's $E$ leaves out):

# %%
agent = fep.GenerativeModel.thermostat(T_desire=4.0, sigma_z=0.1, sigma_w=0.1, order=2)
mu = torch.tensor([12.0, -1.0, 0.5], dtype=torch.float64)
phi = torch.tensor([20.0, 0.0], dtype=torch.float64)
n_const = agent.n_sensory + agent.order
print("E(mu, phi)                       =", agent.energy(mu, phi).item())
print("-log p(mu, phi) from Pyro - const =", (-agent.log_joint(mu, phi) - n_const / 2 * math.log(2 * math.pi)).item())
lap = agent.laplace(mu, phi)
print("Laplace variance zeta* = inverse Hessian of E:\n", lap["zeta"].numpy().round(4))

# %% [markdown]
# ## 3. Perception alone
#
# Perception is a gradient flow on $E$, in a frame that moves with the believed motion:
#
# $$\dot{\tilde\mu} = D\tilde\mu - \kappa_\mu\, \frac{\partial E}{\partial\tilde\mu},\qquad
# D(\mu, \mu', \mu'') = (\mu', \mu'', 0).$$
#
# For $t \le 25$ the agent does not act: the world stays at 20 degrees and only its beliefs move.
# `fep.simulate()` runs the paper's set-up (MATH.md §4.1: $\sigma_z = \sigma_w = 0.1$,
# $\kappa_\mu = 0.1$, $\kappa_a = 0.01$, Euler steps $dt = 0.005$ up to $t = 100$, action after
# $t = 25$), noise-free.

# %%
run = fep.simulate(record_every=RECORD, progress=False)
before = run[run["t"] <= 25]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for col in ("mu", "mu'", "mu''"):
    axes[0].plot(before["t"], before[col], label=col)
axes[0].axhline(20, color="C3", ls=":", label="sensed T = 20")
axes[0].axhline(4, color="C2", ls=":", label="desired T = 4")
axes[0].axhline(12, color="k", ls="--", lw=0.8, label="12")
axes[0].set(xlabel="time", ylabel="belief", title="perception: beliefs settle")
axes[0].legend(fontsize=8, ncol=2)
axes[1].semilogy(before["t"], before["F"])
axes[1].set(xlabel="time", ylabel="F (precision-weighted squared errors)", title="free energy falls")
fig.tight_layout()
plt.show()

# %%
settled = before.iloc[-1]
mu0, mu1 = settled["mu"], settled["mu'"]
print(f"at t = 25: mu = {mu0:.3f}, mu' = {mu1:.3f}, F fell from {before['F'].iloc[0]:.0f} to {settled['F']:.1f}")

# %% [markdown]
# The belief $\mu$ settles at **12, halfway between the sensed 20 and the desired 4**: the senses and the
# prior dynamics have equal precisions, so neither wins. $F$ falls from about 2080 to about 498, but not
# to 0: as long as the world stays at 20 degrees, the sensations contradict the prior, and perception
# alone cannot remove that error.
#
# Why exactly 12? The flow stops where $D\tilde\mu = \kappa_\mu \partial E/\partial\tilde\mu$. For the
# thermostat $E$ is quadratic, so $\partial E / \partial(\tilde\mu, \tilde\varphi)$ is an affine map
# $W(\tilde\mu, \tilde\varphi) + b$ (`GenerativeModel.gradient_operator`), and the fixed point solves a
# linear system. (In generalized coordinates the belief also carries a velocity $\mu'$; with the paper's
# $\kappa_\mu = \sigma_w$ the $\mu'$ terms cancel in the first equation and $\mu$ is exactly the
# precision-weighted average of section 1. Section 5 shows settings where it is not.)


# %%
def fixed_point(model, phi, kappa_mu=0.1):
    """The beliefs where perception stops: D mu - kappa (W [mu; phi] + b)[:K] = 0."""
    W, b = model.gradient_operator()
    k = model.order + 1
    D = torch.diag(torch.ones(k - 1, dtype=W.dtype), 1)
    return torch.linalg.solve(D - kappa_mu * W[:k, :k], kappa_mu * (W[:k, k:] @ phi + b[:k]))


print("fixed point (mu, mu', mu''):", fixed_point(agent, phi).numpy().round(4))
print("simulation at t = 25:       ", settled[["mu", "mu'", "mu''"]].to_numpy().astype(float).round(4))

# %% [markdown]
# ## 4. Action
#
# The agent can lower $F$ further only by changing what it senses. Action also descends $F$, through
# the agent's *inverse model* $\partial\tilde\varphi/\partial a$ (how its sensations change when it acts):
#
# $$\dot a = -\kappa_a \frac{\partial\tilde\varphi}{\partial a}\cdot\frac{\partial E}{\partial\tilde\varphi}
# = -\kappa_a\, T_\vartheta\, \frac{\varepsilon_{z1}}{\sigma_{z1}},$$
#
# since the agent sets its velocity $\vartheta' = a$ and senses $\varphi' = T_\vartheta \vartheta'$
# ($T_\vartheta = dT/d\vartheta$). The expectation "temperature relaxes towards 4" becomes a
# self-fulfilling prophecy: the agent moves away from the heat source until the sensations agree.

# %%
fig = fep.plot_trajectories(run, action_onset=25)
plt.show()

# %%
end = run.iloc[-1]
print(
    f"t = 100: T = {end['T']:.3f} (desired 4), position {end['position']:.3f}, F = {end['F']:.4f}, "
    f"lowest T on the way {run['T'].min():.3f}"
)

# %% [markdown]
# After $t = 25$ the agent moves out, the temperature falls, overshoots below 4 and comes back (the
# action oscillates, damped), and by $t = 100$ the temperature is within a few hundredths of 4 and $F$
# is near 0: perception lowered $F$ by changing the beliefs, action by changing the world.
#
# **With noisy senses.** The paper's second run adds sensory noise of sd 0.1 to $\varphi$ and $\varphi'$.
# The beliefs are a low-pass filter of the noisy sensations: the precision weighting decides how much
# each new sensation moves them.

# %%
noisy = fep.simulate(noise=0.1, seed=1, record_every=RECORD, progress=False)
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.plot(noisy["t"], noisy["phi'"], lw=0.5, color="0.6", label="sensed rate of change φ'")
ax.plot(noisy["t"], noisy["mu'"], lw=1.2, label="believed rate of change μ'")
ax.plot(noisy["t"], noisy["T"] - 4, lw=1.2, label="T − 4")
ax.axvline(25, color="0.7", ls=":")
ax.set(xlabel="time", title="noisy run: beliefs filter the noisy sensations")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5. The effect of precisions
#
# The precisions $1/\sigma_z$ (trust in the senses) and $1/\sigma_w$ (trust in the prior dynamics) weight
# the prediction errors. `fep.sweep` runs one agent per $(\sigma_z, \sigma_w)$ pair, all in one batched
# simulation. The heat map on the right is the belief reached before action, to compare with the
# precision-weighted average $(20/\sigma_z + 4/\sigma_w)/(1/\sigma_z + 1/\sigma_w)$.

# %%
grid = fep.sweep(sigma_z=(0.01, 0.1, 1.0), sigma_w=(0.01, 0.1, 1.0), record_every=max(RECORD // 4, 1), progress=False)
fig = fep.plot_sweep(grid)
plt.show()

# %%
rows = []
for (sz, sw), d in grid.groupby(["sigma_z", "sigma_w"]):
    model = fep.GenerativeModel.thermostat(4.0, sigma_z=sz, sigma_w=sw, order=2)
    rows.append(
        (
            sz,
            sw,
            d[d["t"] <= 25]["mu"].iloc[-1],
            fixed_point(model, phi)[0].item(),
            (20 / sz + 4 / sw) / (1 / sz + 1 / sw),
            d["T"].iloc[-1],
            d["position"].iloc[-1],
        )
    )
print(" sigma_z sigma_w | mu(t=25) fixed point  weighted avg | T(100)  position(100)")
for sz, sw, m, fp, avg, T, x in rows:
    print(f"{sz:8g}{sw:8g} | {m:8.2f} {fp:11.2f} {avg:13.2f} | {T:6.3f} {x:10.2f}")

# %% [markdown]
# What the sweep shows:
#
# * **Perception**: the more precise the senses (small $\sigma_z$), the closer $\mu$ stays to the sensed 20;
#   the more precise the prior (small $\sigma_w$), the closer to the desired 4. With $\kappa_\mu = \sigma_w$
#   (the middle column) $\mu$ is exactly the precision-weighted average; elsewhere the belief's velocity
#   $\mu'$ shifts the fixed point, and with low precisions on both (bottom right) the flow is so slow it
#   has not settled by $t = 25$.
# * **Action** is driven by the *sensory* prediction error $\varepsilon_{z1}/\sigma_{z1}$: imprecise senses
#   ($\sigma_z = 1$) make a sluggish agent that has not reached 4 by $t = 100$; precise ones a fast one
#   that overshoots further.
# * **Too much trust in the senses, too little in the prior** ($\sigma_z = 0.01$, $\sigma_w = 1$): the
#   action gain is a hundred times larger, the agent bolts, shoots past the 4-degree point into the cold
#   far away, where $T_\vartheta \approx 0$. There its inverse model says that moving changes nothing, so
#   action can no longer be corrected: it keeps walking at full speed (the temperature tends to 0). The
#   free-energy scheme is a gradient flow, and like any gradient method it fails where its gradient
#   vanishes.
#
# **Take-aways.** Under the Laplace approximation the free energy becomes a sum of precision-weighted
# prediction errors; perception descends it by changing beliefs, action by changing sensations; the
# precisions decide how much each source of evidence counts, and set the gains of both loops.
