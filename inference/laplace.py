"""Laplace approximation: a Gaussian at the posterior mode, on the unconstrained space.

Every continuous latent site z_s of the model is mapped to an unconstrained u_s = T_s(z_s) (the same
bijections NUTS uses), and the sites are stacked into one flat vector u of length d. The potential

    U(u) = -log p(x, T^-1(u)) - log |det J_{T^-1}(u)|

is minimised with L-BFGS (strong-Wolfe line search) and polished with Newton steps; at the mode u*
the exact Hessian H = d²U/du² is taken by autograd, and the posterior approximation is

    q(u) = N(u; u*, H^-1)

whose draws are mapped back through T^-1, so every sample respects its site's support. Discrete sites
that Pyro can enumerate are summed out of U exactly. The same Gaussian also gives the Laplace estimate
of the evidence, log p(x) ~= -U(u*) + d/2 log 2π - 1/2 log det H (MATH.md §1, §4).
"""

import math
import time
import warnings

import numpy as np
import torch

from . import verdict
from .common import generator
from .errors import InvalidInputError, NonFiniteError, check_data, check_positive
from .potential import ModelPotential
from .result import Fit

KHAT_DRAWS = 1000  # draws behind the verdict's k-hat
NEWTON_LIMIT = 0.01  # the mode may be off by at most this many posterior sds
NEWTON_STEPS = 20  # most Newton steps after L-BFGS


def laplace(model, *data, init=None, optimize=True, max_iter=500, tol=1e-9, max_plate_nesting=None, seed=0, check=True):
    """Fit a Laplace approximation to the posterior of ``model(*data)``.

    Args:
        model: a Pyro model whose latent sites are continuous (discrete sites with enumerable support
            are summed out; ``max_plate_nesting`` then bounds the plates, as for NUTS).
        *data: the model's positional arguments (tensors are checked for NaN and, where the model
            allows, promoted to float64 for the optimisation and the Hessian).
        init: optional ``{site: constrained value}`` starting point; other sites start at their
            prior median.
        optimize: if False, no optimisation: the Gaussian is built at ``init`` (which must then give
            every latent site), e.g. to get the curvature at a current belief rather than the mode.
        max_iter: most L-BFGS iterations.
        tol: stop when an iteration changes U by less than ``tol * max(1, |U|)``.
        seed: seeds Pyro's RNG for the prior-median initialisation.
        check: judge the fit (below); False skips the k-hat draws, for callers that judge it themselves.

    Returns:
        Fit with method "laplace": ``losses`` is U per L-BFGS iteration (its first entry at the
        start point); ``params`` the point (constrained value per site); ``draw``/``samples`` sample
        q and map back to each site's shape and support; ``importance`` gives draws and -U(u) - log q(u) at
        u ~ q (for PSIS k-hat and reweighted draws). ``diagnostics``: "hessian" [d, d], "covariance" (H^-1),
        "log_det_hessian", "potential" (U at the point), "gradient" (dU/du there), "loc" (u*), "sites"
        (site -> slice of u), "log_evidence", "lbfgs_converged", "n_iter", "normal" (q as a
        torch MultivariateNormal), and the verdict: "khat" and "newton_sds" = sqrt(gᵀ H⁻¹ g), the length
        of the Newton step still left at the point, in posterior sds.

    Warns:
        ConvergenceWarning when L-BFGS stopped at max_iter, the Newton step left exceeds 0.01 posterior
        sds (the gradient is not small relative to the curvature), or k-hat > 0.7.

    Raises:
        InvalidInputError: NaN data, a model without continuous latent sites, unknown ``init`` sites,
            or a Hessian that is not positive definite (the message names the sites involved).
        NonFiniteError: the potential or its derivatives become NaN/inf (the sites are named).
    """
    check_positive("max_iter", max_iter, integer=True)
    check_positive("tol", tol)
    check_data(data)
    if init is not None and not isinstance(init, dict):
        raise InvalidInputError(f"init must be a dict {{site: constrained value}}, got {type(init).__name__}")
    if not optimize and not init:
        raise InvalidInputError("optimize=False needs init={site: value} giving the point to expand around")
    start = time.perf_counter()
    out_dtype = torch.get_default_dtype()
    try:
        fit = _laplace(model, data, torch.float64, out_dtype, init, optimize, max_iter, tol, max_plate_nesting, seed)
    except RuntimeError:
        if out_dtype == torch.float64:
            raise
        # the model mixes in fixed float32 tensors (e.g. network weights): stay in its own precision
        fit = _laplace(model, data, out_dtype, out_dtype, init, optimize, max_iter, tol, max_plate_nesting, seed)
    fit.seconds = time.perf_counter() - start
    fit.model, fit.data = model, tuple(data)  # for the log_likelihood and posterior_predictive groups
    if check:
        judge(fit)
    return fit


def judge(fit):
    """The verdict of a Laplace fit: the mode was reached, and q is close to the posterior (k-hat)."""
    d = fit.diagnostics
    draws, log_weights = fit.importance(KHAT_DRAWS, 0)
    _, d["khat"], _ = verdict.psis(log_weights)
    reasons = [verdict.khat_reason(d["khat"], "the Gaussian at the mode")]
    if d["khat"] <= verdict.KHAT_LIMIT:  # above it the weighted means are not to be trusted either
        reasons.append(verdict.shift_reason(draws, log_weights, "the Gaussian at the mode"))
    if d["optimized"] and not d["lbfgs_converged"]:
        reasons.append(f"L-BFGS stopped at max_iter={d['n_iter']} before the potential settled")
    if d["optimized"] and not d["newton_sds"] <= NEWTON_LIMIT:
        reasons.append(
            f"the gradient is not small at the point found: the mode lies about "
            f"{d['newton_sds']:.2g} posterior sds away (raise max_iter or give a better init)"
        )
    verdict.deliver("laplace", d, reasons, stacklevel=3)


def _laplace(model, data, dtype, out_dtype, init, optimize, max_iter, tol, max_plate_nesting, seed):
    U = ModelPotential(model, data, dtype, init, max_plate_nesting, seed)
    if not optimize and U.init_missing:
        raise InvalidInputError(f"optimize=False needs init for every latent site; missing {U.init_missing}")
    u, losses, converged = U.start, [], True
    if optimize:
        u, losses, converged = _minimize(U, u, max_iter, tol)
    n_iter = len(losses)
    where = "the mode" if optimize else "the given point"
    value, grad, H = _derivatives(U, u, where)
    L = _cholesky(U, H, where)
    for _ in range(NEWTON_STEPS if optimize else 0):
        # Newton steps, halved until U falls: exact in one step for a Gaussian posterior, quadratic
        # convergence otherwise, and they finish what L-BFGS leaves on badly conditioned posteriors
        # (its relative tolerance stops it early when the sds differ by orders of magnitude)
        step = torch.cholesky_solve(grad[:, None], L)[:, 0]
        if float(grad @ step) ** 0.5 <= NEWTON_LIMIT / 100:
            break
        for t in 0.5 ** torch.arange(20, dtype=u.dtype):
            with torch.no_grad():
                new_value = U(u - t * step)
            if torch.isfinite(new_value) and new_value <= value:
                break
        else:
            break
        u = u - t * step
        value, grad, H = _derivatives(U, u, where)
        L = _cholesky(U, H, where)
        losses.append(float(value))
    losses.append(float(value))
    fit = _make_fit(U, u, value, grad, H, L, losses, converged, n_iter, out_dtype)
    fit.diagnostics["optimized"] = optimize
    return fit


def _minimize(U, u0, max_iter, tol):
    """L-BFGS on U from u0: (u*, U per iteration, converged)."""
    u = u0.clone().requires_grad_(True)
    # one iteration per step() call, so that U is recorded per iteration; convergence is judged here
    opt = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=1,
        max_eval=25,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )

    def closure():
        opt.zero_grad()
        loss = U(u)
        loss.backward()
        return loss

    losses = []
    for _ in range(max_iter):
        # step() evaluates U at the current point first: that value is the previous iteration's result
        loss = float(opt.step(closure).detach())
        if not math.isfinite(loss) or not torch.isfinite(u).all():
            bad = ~torch.isfinite(u.detach()) | ~torch.isfinite(u.grad)
            raise NonFiniteError(
                f"laplace: the potential became {loss} during L-BFGS at iteration "
                f"{len(losses)}; sites with non-finite values or gradients: "
                f"{U.sites_where(bad) or list(U.sites)}"
            )
        losses.append(loss)
        if len(losses) > 1 and abs(losses[-2] - loss) <= tol * max(1.0, abs(loss)):
            return u.detach(), losses, True
        if u.grad is not None and float(u.grad.abs().max()) == 0.0:
            return u.detach(), losses, True
    return u.detach(), losses, False


def _derivatives(U, u, where):
    """U(u), dU/du [d] and the exact Hessian d²U/du² [d, d] (symmetrised) by autograd."""
    u = u.detach().requires_grad_(True)
    value = U(u)
    (grad,) = torch.autograd.grad(value, u, create_graph=True)
    if not grad.requires_grad:  # U is linear in u: zero curvature
        H = torch.zeros(U.dim, U.dim, dtype=u.dtype)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's notes on batching rules it falls back on
                (H,) = torch.autograd.grad(
                    grad, u, torch.eye(U.dim, dtype=u.dtype), is_grads_batched=True, materialize_grads=True
                )
        except RuntimeError:  # some op without a vmap rule: one backward pass per row
            H = torch.stack(
                [torch.autograd.grad(grad[i], u, retain_graph=True, materialize_grads=True)[0] for i in range(U.dim)]
            )
    value, grad, H = value.detach(), grad.detach(), H.detach()
    if not torch.isfinite(value) or not torch.isfinite(grad).all():
        raise NonFiniteError(
            f"laplace: the potential or its gradient is not finite at {where} "
            f"(U = {float(value)}); sites: {U.sites_where(~torch.isfinite(grad))}"
        )
    if not torch.isfinite(H).all():
        raise NonFiniteError(
            f"laplace: the Hessian is not finite at {where}; sites: {U.sites_where(~torch.isfinite(H).all(0))}"
        )
    return value, grad, (H + H.T) / 2


def _cholesky(U, H, where):
    """Lower Cholesky factor of H, or an error naming the sites along which H is not positive definite."""
    L, info = torch.linalg.cholesky_ex(H)
    pivots = torch.diagonal(L) ** 2
    # a pivot at round-off level relative to the largest: singular in this precision (a flat direction)
    if int(info) == 0 and pivots.min() > 100 * torch.finfo(H.dtype).eps * pivots.max():
        return L
    blocks = [n for n, s in U.sites.items() if int(torch.linalg.cholesky_ex(H[s, s])[1]) != 0]
    evals, evecs = torch.linalg.eigh(H)
    nonpos = evals <= evals.abs().max() * 1e-12
    # a site is involved when it carries a tenth or more of a non-positive eigenvector's weight
    load = (evecs[:, nonpos] ** 2 >= 0.1).any(1)
    involved = list(dict.fromkeys(blocks + U.sites_where(load)))
    detail = f"; the block of {blocks} on its own is not" if blocks else ""
    raise InvalidInputError(
        f"laplace: the Hessian of the negative log posterior at {where} is not positive definite "
        f"(smallest eigenvalue {float(evals[0]):.3g}) along site(s) {involved}{detail}. The point is a "
        "saddle or a maximum, or the posterior is flat there (improper prior, unidentified parameter); "
        "try optimize=True, another init, or a proper prior for these sites."
    )


def _make_fit(U, u, value, grad, H, L, losses, converged, n_iter, out_dtype):
    d = U.dim
    log_det = 2 * torch.log(torch.diagonal(L)).sum()
    covariance = torch.cholesky_inverse(L)

    def sample(num_samples, seed):
        """u ~ N(u*, H^-1) [n, d] and log q(u) [n], from seeded standard normals."""
        eps = torch.randn(num_samples, d, generator=generator(seed), dtype=u.dtype)
        # H = L Lᵀ, so u* + L⁻ᵀ eps has covariance L⁻ᵀ L⁻¹ = H⁻¹
        draws = u + torch.linalg.solve_triangular(L.T, eps.T, upper=True).T
        log_q = -0.5 * (eps**2).sum(-1) - 0.5 * d * math.log(2 * math.pi) + 0.5 * log_det
        return draws, log_q

    def draw(num_samples, seed=0):
        draws, _ = sample(num_samples, seed)
        return {n: v.to(out_dtype) for n, v in U.constrain(draws).items()}

    def importance(num_samples, seed=0):
        draws, log_q = sample(num_samples, seed)
        constrained = {n: v.to(out_dtype) for n, v in U.constrain(draws).items()}
        return constrained, (-U.many(draws) - log_q).numpy()

    point = {n: v.detach().to(out_dtype) for n, v in U.constrain(u).items()}
    diagnostics = {
        "hessian": H,
        "covariance": covariance,
        "log_det_hessian": float(log_det),
        "potential": float(value),
        "gradient": grad,
        "loc": u,
        "sites": dict(U.sites),
        "log_evidence": float(-value + 0.5 * d * math.log(2 * math.pi) - 0.5 * log_det),
        "lbfgs_converged": converged,
        "n_iter": n_iter,
        "newton_sds": float(grad @ torch.cholesky_solve(grad[:, None], L)[:, 0]) ** 0.5,
        "normal": torch.distributions.MultivariateNormal(u, precision_matrix=H),
    }
    return Fit(
        method="laplace",
        losses=np.asarray(losses, dtype=float),
        seconds=0.0,
        draw=draw,
        params=point,
        diagnostics=diagnostics,
        importance=importance,
    )
