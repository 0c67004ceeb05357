"""Pathfinder: normal approximations along an L-BFGS path, importance-resampled across paths.

Zhang, Carpenter, Gelman & Vehtari (2022), "Pathfinder: Parallel quasi-Newton variational inference",
JMLR 23(306). On the unconstrained space of the model's continuous latent sites (the flat u and the
potential U(u) = -log p(x, T⁻¹(u)) - log det J of :mod:`inference.potential`, the one Laplace uses):

1. L-BFGS minimises U from a random start (uniform(-2, 2) per coordinate, as Stan does), and every
   iterate u_l with its gradient g_l = dU/du is kept (Alg. 1).
2. From the pairs s = u_l - u_(l-1), y = g_l - g_(l-1) (skipped where s·y <= eps ‖y‖², the
   curvature condition) the inverse Hessian estimate at iterate l takes its compact
   diagonal-plus-low-rank form (Byrd, Nocedal & Schnabel 1994; Alg. 3), over the last J pairs,

       Σ_l = diag(α) + β γ βᵀ,   β = [diag(α) Y, S]  [d, 2J],
       γ = [[0, -R⁻¹], [-R⁻ᵀ, R⁻ᵀ (E + Yᵀ diag(α) Y) R⁻¹]],   R = triu(SᵀY),  E = diag(SᵀY),

   with α the diagonal updated at each accepted pair. It defines q_l = N(μ_l, Σ_l), μ_l = u_l - Σ_l g_l:
   a quasi-Newton step from u_l. Sampling and log q cost O(d J) per draw through a thin QR of
   diag(α)^(-1/2) β (Alg. 4).
3. ELBO_l = mean over K draws φ ~ q_l of log p(x, φ) - log q_l(φ); the path keeps the q_l of the best.
4. Several paths (run one after another here, not in parallel) give normals q_1..q_I. Draws of their
   equal-weight mixture q = (1/I) Σ_i q_i, M per path, get importance weights
   w = p(x, u) / q(u), Pareto-smoothed (PSIS); ``draw`` resamples them with probabilities w (Alg. 5).

The paper weights each path's draws by its own q_i; the mixture density in the denominator (the
balance heuristic of multiple importance sampling, Veach & Guibas 1995) is never worse in variance and
is the density ``importance`` must report for draws of the mixture. PSIS k-hat of these weights is the
verdict: above 0.7 the resampled draws cannot be trusted (Vehtari et al. 2024).

The file runs just past 400 lines: the paths, the low-rank normal and the mixture's importance weights are
one method, and half of it is docstrings.
"""

import math
import time

import numpy as np
import pyro
import scipy.optimize
import torch
from tqdm import tqdm

from . import verdict
from .common import generator, hide_progress
from .errors import InvalidInputError, NonFiniteError, check_data, check_positive
from .potential import ModelPotential, default_dtype
from .result import Fit

INIT_RADIUS = 2.0  # random starts uniform(-2, 2) on the unconstrained space (Stan's default)
INIT_TRIES = 100  # random starts tried per path until U is finite (as Stan does)
CURVATURE_EPS = 1e-12  # skip a pair unless s·y > eps ‖y‖²: y nearly orthogonal to s gives no curvature
GRAD_TOL = 1e-8  # L-BFGS also stops when every gradient element is below this (Stan's tol_grad)
MAX_LINE_SEARCH = 50  # function evaluations per L-BFGS line search
MAX_RESTARTS = 20  # fresh L-BFGS runs from where a stalled one stopped (see _lbfgs)
MIN_ESS = 100  # fewer effective draws leave a mean uncertain by more than sd / sqrt(100) = 0.1 sd


def pathfinder(
    model,
    *data,
    num_paths=4,
    num_draws=1000,
    num_elbo_draws=5,
    history=6,
    max_iter=1000,
    tol=1e-12,
    init=None,
    max_plate_nesting=None,
    seed=0,
    progress=None,
):
    """Fit single- or multi-path Pathfinder to the posterior of ``model(*data)``.

    Args:
        model: a Pyro model with continuous latent sites (discrete sites with enumerable support are
            summed out; ``max_plate_nesting`` then bounds the plates).
        *data: the model's positional arguments (checked for NaN; floats promoted to float64).
        num_paths: independent L-BFGS paths (1: single-path Pathfinder); run in sequence.
        num_draws: draws from each path's best normal, pooled and importance-weighted.
        num_elbo_draws: draws K per iterate for its ELBO estimate (the paper's 5; Stan uses 25). The
            estimate only picks the iterate, importance resampling then corrects the normal it picked,
            and its K potential evaluations per iterate dominate the cost of long paths.
        history: J, the (s, y) pairs kept by L-BFGS and by the inverse Hessian estimate.
        max_iter: most L-BFGS iterations per path.
        tol: L-BFGS stops when an iteration lowers U by less than ``tol * max(1, abs(U))`` (a stalled
            run is restarted while it still gains). Small, about Stan's 1e4 machine epsilons: looser
            values stop paths on narrow ridges far from the mode (an uncentred regression).
        init: optional ``{site: constrained value}``: every path starts there on those sites (the
            others start uniform in (-2, 2) on the unconstrained space).
        max_plate_nesting: plates to leave for enumeration (None: found from one run).
        seed: seeds the starts, the ELBO draws and the pooled draws.
        progress: show a progress bar over paths (None: when the output is a terminal).

    Returns:
        Fit with method "pathfinder": ``draw(n, seed)`` resamples the pooled draws with their
        PSIS-smoothed weights (with replacement); ``importance(n, seed)`` gives fresh draws of the
        mixture of the paths' normals and log p(x, u) - log q(u) (so ``reweighted`` and k-hat work);
        ``losses`` is -ELBO per L-BFGS iterate of the best path; ``params`` the best normal's mean,
        constrained. ``diagnostics``: "khat", "ess" (of the pooled weights), "elbo" (best ELBO per
        path, NaN where it failed), "iterations", "best_iteration", "skipped_updates",
        "lbfgs_converged", "lbfgs_message", "paths_failed", "failures" (why), "normals" (each
        path's best :class:`LowRankNormal` on u), "sites" (site -> slice of u), and the verdict.

    Warns:
        ConvergenceWarning when k-hat > 0.7, a path failed, a path's L-BFGS stopped at max_iter, or
        the pooled weights' effective sample size is below 100.

    Raises:
        InvalidInputError: bad settings, NaN data, a model without continuous latent sites, bad init.
        NonFiniteError: every path failed (no start with a finite potential, or no finite ELBO).
    """
    for name, value in [
        ("num_paths", num_paths),
        ("num_draws", num_draws),
        ("num_elbo_draws", num_elbo_draws),
        ("history", history),
        ("max_iter", max_iter),
    ]:
        check_positive(name, value, integer=True)
    check_positive("tol", tol)
    check_data(data)
    if init is not None and not isinstance(init, dict):
        raise InvalidInputError(f"init must be a dict {{site: constrained value}}, got {type(init).__name__}")
    start = time.perf_counter()
    out_dtype = torch.get_default_dtype()
    with default_dtype(torch.float64), pyro.validation_enabled(False):
        U = ModelPotential(model, data, torch.float64, init, max_plate_nesting, seed)
        U.flat.compile()
        seeds = np.random.SeedSequence(seed).generate_state(num_paths + 1)
        paths = []
        bar = tqdm(range(num_paths), desc="pathfinder", disable=hide_progress(progress))
        for i in bar:
            paths.append(
                _run_path(U, init is not None, generator(int(seeds[i])), history, max_iter, tol, num_elbo_draws)
            )
            bar.set_postfix(elbo=f"{paths[-1]['elbo']:.4g}")
        fit = _make_fit(U, paths, num_draws, int(seeds[-1]), max_iter, out_dtype)
    fit.seconds = time.perf_counter() - start
    fit.model, fit.data = model, tuple(data)  # for the log-likelihood and predictive groups of to_inference_data
    judge(fit)
    return fit


def judge(fit):
    """The verdict of a Pathfinder fit: k-hat of the pooled weights, failed or unfinished paths, ESS."""
    d = fit.diagnostics
    reasons = [verdict.khat_reason(d["khat"], "the mixture of the paths' normals", reweightable=False)]
    if not math.isfinite(d["khat"]):
        reasons.append("no importance weight is finite: the normals miss the posterior entirely")
    if d["paths_failed"]:
        reasons.append(f"{d['paths_failed']} of {len(d['elbo'])} paths failed ({'; '.join(d['failures'])})")
    unfinished = [i for i, ok in enumerate(d["lbfgs_converged"]) if ok is False]
    if unfinished:
        reasons.append(
            f"L-BFGS stopped at max_iter={d['max_iter']} on path(s) {unfinished} before the "
            "potential settled (raise max_iter)"
        )
    if math.isfinite(d["ess"]) and d["ess"] < MIN_ESS:
        reasons.append(
            f"the importance weights leave {d['ess']:.0f} effective draws of {d['num_proposals']}: "
            "means are uncertain by more than 0.1 sd (raise num_draws or num_paths)"
        )
    verdict.deliver("pathfinder", d, reasons, stacklevel=3)


class LowRankNormal:
    """N(μ, Σ) on u with Σ = diag(α) + β γ βᵀ, the L-BFGS inverse Hessian at one iterate (Alg. 3-4).

    Args:
        u: the iterate [d].
        grad: dU/du there [d].
        alpha: the diagonal α [d] (positive).
        S, Y: the accepted pairs s and y as columns, oldest first [d, m] (m may be 0).

    Attributes:
        loc: μ = u - Σ grad [d]; log_det: log det Σ; dim: d.

    Raises:
        ValueError: Σ is not positive definite in floating point.
    """

    def __init__(self, u, grad, alpha, S, Y):
        self.dim, self.alpha, self._sqrt_alpha = u.shape[0], alpha, alpha.sqrt()
        m = S.shape[1]
        if m == 0:
            self.beta, self.gamma = u.new_zeros(self.dim, 0), u.new_zeros(0, 0)
        else:
            SY = S.T @ Y
            R_inv = torch.linalg.solve_triangular(torch.triu(SY), torch.eye(m, dtype=u.dtype), upper=True)
            inner = R_inv.T @ (torch.diag(torch.diagonal(SY)) + Y.T @ (alpha[:, None] * Y)) @ R_inv
            self.beta = torch.cat([alpha[:, None] * Y, S], 1)
            self.gamma = torch.cat(
                [torch.cat([torch.zeros(m, m, dtype=u.dtype), -R_inv], 1), torch.cat([-R_inv.T, inner], 1)], 0
            )
        self.loc = u - self.matvec(grad)
        # whitened by diag(α)^(-1/2), Σ = I + Q (L Lᵀ - I) Qᵀ with Q orthonormal, L Lᵀ = I + R γ Rᵀ
        self._Q, R = torch.linalg.qr(self.beta / self._sqrt_alpha[:, None])
        k = self._Q.shape[1]
        L, info = torch.linalg.cholesky_ex(torch.eye(k, dtype=u.dtype) + R @ self.gamma @ R.T)
        if int(info) != 0 or not torch.isfinite(L).all():
            raise ValueError("the inverse Hessian estimate is not positive definite")
        self._L = L
        self.log_det = float(torch.log(alpha).sum() + 2 * torch.log(torch.diagonal(L)).sum())
        if not math.isfinite(self.log_det) or not torch.isfinite(self.loc).all():
            raise ValueError("the normal's mean or log det is not finite")

    def matvec(self, v):
        """Σ v for v [d]."""
        return self.alpha * v + self.beta @ (self.gamma @ (self.beta.T @ v))

    def covariance(self):
        """Σ as a dense [d, d] matrix."""
        return torch.diag(self.alpha) + self.beta @ self.gamma @ self.beta.T

    def sample(self, num_samples, gen):
        """Draws u ~ N(μ, Σ) [n, d] and log q(u) [n] (Alg. 4), from ``gen`` (a torch.Generator)."""
        z = torch.randn(num_samples, self.dim, generator=gen, dtype=self.loc.dtype)
        eye = torch.eye(self._L.shape[0], dtype=z.dtype)
        w = z + (z @ self._Q) @ (self._L - eye).T @ self._Q.T  # w = (I + Q (L - I) Qᵀ) z: Cov(w) = Σ whitened
        log_q = -0.5 * (self.log_det + (z**2).sum(-1) + self.dim * math.log(2 * math.pi))
        return self.loc + self._sqrt_alpha * w, log_q

    def log_prob(self, u):
        """log N(u; μ, Σ) at each row of u [n, d] -> [n]."""
        w = (u - self.loc) / self._sqrt_alpha
        p = w @ self._Q  # Σ⁻¹ = I - Q Qᵀ + Q (L Lᵀ)⁻¹ Qᵀ, whitened
        solved = torch.linalg.solve_triangular(self._L, p.T, upper=False)
        quad = (w**2).sum(-1) - (p**2).sum(-1) + (solved**2).sum(0)
        return -0.5 * (self.log_det + quad + self.dim * math.log(2 * math.pi))


def _start(U, given, gen):
    """A start u0 [d]: uniform(-2, 2) on the sites without a given value; None if U is never finite."""
    random = torch.ones(U.dim, dtype=torch.bool)
    if given:
        random[:] = False
        for name in U.init_missing:
            random[U.sites[name]] = True
    for _ in range(INIT_TRIES if bool(random.any()) else 1):
        u0 = U.start.clone()
        u0[random] = INIT_RADIUS * (2 * torch.rand(int(random.sum()), generator=gen, dtype=u0.dtype) - 1)
        value, grad = U.flat(u0.numpy())
        if math.isfinite(value) and np.isfinite(grad).all():
            return u0
    return None


def _lbfgs(U, u0, history, max_iter, tol):
    """L-BFGS on U from u0: every iterate [L+1, d], its gradient [L+1, d], converged, scipy's message."""
    seen = {}

    def fun(x):
        value, grad = U.flat(x)
        if not (math.isfinite(value) and np.isfinite(grad).all()):
            value, grad = math.inf, np.zeros_like(x)  # outside the density's domain: the line search backs off
        seen.clear()  # the accepted point is the last one evaluated
        seen[x.tobytes()] = grad
        return value, grad

    x, (value, grad) = u0.numpy().copy(), fun(u0.numpy().copy())
    points, grads, values = [x], [grad], [value]

    def callback(intermediate_result):
        x = np.array(intermediate_result.x, dtype=np.float64)
        grad = seen.get(x.tobytes())
        points.append(x)
        grads.append(grad if grad is not None else fun(x.copy())[1])
        values.append(float(intermediate_result.fun))

    for _ in range(MAX_RESTARTS + 1):
        first = len(points) - 1
        result = scipy.optimize.minimize(
            fun,
            points[-1].copy(),
            jac=True,
            method="L-BFGS-B",
            callback=callback,
            options={
                "maxcor": history,
                "maxiter": max_iter - first,
                "ftol": tol,
                "gtol": GRAD_TOL,
                "maxls": MAX_LINE_SEARCH,
            },
        )
        # a stop on a small relative decrease can be a stall, not the optimum: a history dominated by a
        # pair from far away (a first step out of an overflowing start) makes every later step tiny,
        # and a narrow ridge slows L-BFGS down. Restart with a fresh history while a run still gains.
        stalled = result.status == 0 and "REDUCTION" in str(result.message)
        gained = values[first] - values[-1] > tol * max(1.0, abs(values[-1]))
        if not (stalled and gained) or len(points) - 1 >= max_iter:
            break
    return (
        torch.from_numpy(np.stack(points)),
        torch.from_numpy(np.stack(grads)),
        result.status != 1,
        str(result.message),
    )


def _next_alpha(alpha, s, y):
    """The diagonal after pair (s, y): inverse of the diagonal of the BFGS update of diag(α)⁻¹
    scaled by yᵀ diag(α) y / yᵀ s (Alg. 3); None where round-off leaves it non-positive."""
    a, b, c = y @ (alpha * y), y @ s, s @ (s / alpha)
    new = 1 / (a / (b * alpha) + y**2 / b - a * s**2 / (b * c * alpha**2))
    return new if bool(torch.isfinite(new).all() and (new > 0).all()) else None


def _run_path(U, given, gen, history, max_iter, tol, num_elbo_draws):
    """One path: L-BFGS, a normal per iterate, the ELBO of each, the best normal (Alg. 1)."""
    path = {
        "elbo": math.nan,
        "iterations": 0,
        "best_iteration": None,
        "skipped": 0,
        "converged": None,
        "message": "",
        "normal": None,
        "elbos": np.zeros(0),
        "failure": None,
    }
    u0 = _start(U, given, gen)
    if u0 is None:
        path["failure"] = f"U is not finite at {INIT_TRIES} random starts"
        return path
    points, grads, path["converged"], path["message"] = _lbfgs(U, u0, history, max_iter, tol)
    path["iterations"] = len(points) - 1
    alpha, pairs, elbos, best = torch.ones(U.dim, dtype=torch.float64), [], [], -math.inf
    for step in range(1, len(points)):
        s, y = points[step] - points[step - 1], grads[step] - grads[step - 1]
        new_alpha = _next_alpha(alpha, s, y) if s @ y > CURVATURE_EPS * (y @ y) else None
        if new_alpha is None:
            path["skipped"] += 1
        else:
            alpha, pairs = new_alpha, (pairs + [(s, y)])[-history:]
        S = torch.stack([p[0] for p in pairs], 1) if pairs else points.new_zeros(U.dim, 0)
        Y = torch.stack([p[1] for p in pairs], 1) if pairs else points.new_zeros(U.dim, 0)
        try:
            normal = LowRankNormal(points[step], grads[step], alpha, S, Y)
        except ValueError:
            elbos.append(-math.inf)
            continue
        draws, log_q = normal.sample(num_elbo_draws, gen)
        elbo = float((-U.many(draws) - log_q).mean())
        elbos.append(elbo if not math.isnan(elbo) else -math.inf)
        if elbos[-1] > best:
            best, path["normal"], path["best_iteration"] = elbos[-1], normal, step
    path["elbos"] = np.asarray(elbos)
    if path["normal"] is None:
        path["failure"] = (
            "L-BFGS made no step"
            if not elbos
            else f"no finite ELBO at any of {len(elbos)} iterates ({path['message']})"
        )
    else:
        path["elbo"] = best
    return path


class _Mixture:
    """The equal-weight mixture of the paths' best normals on u."""

    def __init__(self, normals):
        self.normals = normals

    def sample(self, num_samples, gen):
        """num_samples draws [n, d] (n / I from each normal, the remainder from the first ones) and
        log q(u) [n] of the mixture whose weights are those shares."""
        k = len(self.normals)
        counts = [num_samples // k + (i < num_samples % k) for i in range(k)]
        draws = torch.cat([q.sample(c, gen)[0] for q, c in zip(self.normals, counts) if c])
        log_shares = torch.log(torch.tensor(counts, dtype=draws.dtype) / num_samples)
        terms = torch.stack([q.log_prob(draws) for q in self.normals])  # [I, n]
        return draws, torch.logsumexp(terms + log_shares[:, None], 0)


def _make_fit(U, paths, num_draws, seed, max_iter, out_dtype):
    ok = [p for p in paths if p["normal"] is not None]
    failures = [f"path {i}: {p['failure']}" for i, p in enumerate(paths) if p["failure"]]
    if not ok:
        raise NonFiniteError(f"pathfinder: every path failed ({'; '.join(failures)}); sites: {list(U.sites)}")
    mixture = _Mixture([p["normal"] for p in ok])

    def importance(num_samples, seed=0):
        with default_dtype(torch.float64), pyro.validation_enabled(False):
            draws, log_q = mixture.sample(num_samples, generator(seed))
            log_w = (-U.many(draws) - log_q).numpy()
        return {n: v.to(out_dtype) for n, v in U.constrain(draws).items()}, log_w

    pool, log_weights = importance(len(ok) * num_draws, seed)
    smoothed, khat, ess = verdict.psis(log_weights)
    probs = torch.as_tensor(
        np.exp(smoothed - np.max(smoothed)) if np.isfinite(smoothed).any() else np.ones_like(smoothed)
    )

    def draw(num_samples, seed=0):
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=generator(seed))
        return {k: v[idx] for k, v in pool.items()}

    best = max(ok, key=lambda p: p["elbo"])
    params = {n: v.to(out_dtype) for n, v in U.constrain(best["normal"].loc).items()}
    diagnostics = {
        "khat": khat,
        "ess": ess,
        "num_proposals": len(log_weights),
        "max_iter": max_iter,
        "elbo": [p["elbo"] for p in paths],
        "iterations": [p["iterations"] for p in paths],
        "best_iteration": [p["best_iteration"] for p in paths],
        "skipped_updates": [p["skipped"] for p in paths],
        "lbfgs_converged": [p["converged"] for p in paths],
        "lbfgs_message": [p["message"] for p in paths],
        "paths_failed": len(paths) - len(ok),
        "failures": failures,
        "normals": mixture.normals,
        "sites": dict(U.sites),
    }
    return Fit(
        method="pathfinder",
        losses=-best["elbos"],
        seconds=0.0,
        draw=draw,
        params=params,
        diagnostics=diagnostics,
        importance=importance,
    )
