"""The No-U-Turn sampler on one flat unconstrained vector z, with Stan's windowed adaptation.

Hamiltonian: H(z, p) = U(z) + ½ pᵀ M⁻¹ p with momentum p ~ N(0, M) and inverse mass matrix ("metric")
M⁻¹, diagonal or dense. One transition (Hoffman & Gelman 2014; multinomial variant, Betancourt 2017):

1. draw p; the trajectory is the single point (z, p); its weight is w = exp(-H).
2. Double the trajectory in a random direction (forward or backward in time) by a subtree of 2^depth
   leapfrog steps of size ε, built recursively from two halves. Within a subtree the proposal is drawn
   among its points in proportion to exp(-H) (progressive multinomial sampling: the later half's
   proposal replaces the earlier's with probability W_later / W_subtree); at the top the new subtree's
   proposal replaces the current one with probability min(1, W_new / W_old) (biased progressive
   sampling, which favours moving far).
3. Stop when the trajectory makes a U-turn, the generalised criterion on p♯ = M⁻¹p at its two ends and
   ρ = Σ p over it: p♯₋·ρ <= 0 or p♯₊·ρ <= 0; checked on every merged subtree, and, as Stan does since
   2.26, also across the two halves extended by one point each; or when a leapfrog step's energy error
   H - H₀ exceeds 1000 (a divergence: the subtree is discarded); or at ``max_tree_depth`` doublings.
   A subtree that turns or diverges is not sampled from.

Warm-up (Stan's windowed adaptation): ε by dual averaging (Nesterov 2009; γ = 0.05, t₀ = 10, κ = 0.75)
toward the target mean acceptance statistic, the mean over the trajectory's points of
min(1, exp(H₀ - H)); M⁻¹ from the draws of "slow" windows (after an initial buffer of 75 steps, windows
of 25, 50, 100, ... steps, the last stretched to the terminal buffer of 50): their variance (or
covariance) shrunk toward 10⁻³ as (n / (n + 5)) Σ̂ + 10⁻³ (5 / (n + 5)) I; after each window ε is found
anew (doubled or halved until one step's acceptance crosses 0.8) and dual averaging restarts from
μ = log(10 ε). At the end of warm-up ε = exp(x̄), the dual-averaging average, and stays fixed. With fewer
than 20 warm-up steps only ε adapts; the 75/25/50 split becomes 15%/75%/10% when it does not fit.

:func:`inference.mcmc.nuts` runs it on a Pyro model's compiled potential (:mod:`inference.potential`).
"""

import math

import numpy as np

MAX_DELTA_H = 1000.0  # Stan: an energy error above this is a divergent transition


class _State:
    """A point of phase space: position z, momentum p, p♯ = M⁻¹p, gradient g = dU/dz, potential U."""

    __slots__ = ("z", "p", "p_sharp", "grad", "U")

    def __init__(self, z, p, p_sharp, grad, U):
        self.z, self.p, self.p_sharp, self.grad, self.U = z, p, p_sharp, grad, U


class _Tree:
    """A stretch of trajectory: its left and right end (in time), ρ = Σ p over its points, log W =
    log Σ exp(H₀ - H) over them, and the point sampled from it so far."""

    __slots__ = ("left", "right", "rho", "log_weight", "proposal")

    def __init__(self, left, right, rho, log_weight, proposal):
        self.left, self.right, self.rho, self.log_weight, self.proposal = left, right, rho, log_weight, proposal


def _no_u_turn(p_sharp_minus, p_sharp_plus, rho):
    """Betancourt's generalised criterion: the ends still move apart along ρ."""
    return float(p_sharp_minus @ rho) > 0 and float(p_sharp_plus @ rho) > 0


def _turns(left, right, rho):
    """Whether the merged trajectory left + right (total ρ) has turned: over the whole, and (Stan 2.26)
    over each half extended by the neighbouring point of the other half."""
    return not (
        _no_u_turn(left.left.p_sharp, right.right.p_sharp, rho)
        and _no_u_turn(left.left.p_sharp, right.left.p_sharp, left.rho + right.left.p)
        and _no_u_turn(left.right.p_sharp, right.right.p_sharp, right.rho + left.right.p)
    )


class Sampler:
    """Multinomial NUTS with Stan's windowed adaptation on a flat z (see the module docstring).

    Args:
        potential: z (numpy [d]) -> (U, dU/dz).
        target_accept_prob: the dual-averaging target δ.
        max_tree_depth: most doublings per transition.
        dense: adapt a dense inverse mass matrix (else diagonal).
        inverse_metric: the first M⁻¹ ([d] diagonal or [d, d]), else the identity.
    """

    def __init__(self, potential, target_accept_prob, max_tree_depth, dense, inverse_metric=None):
        self.potential = potential
        self.dim = potential.dim
        self.delta, self.max_depth, self.dense = target_accept_prob, max_tree_depth, dense
        self.initial_metric = inverse_metric

    # -- the metric
    def _set_metric(self, inverse_metric):
        self.inverse_metric = inverse_metric
        if self.dense:
            # p = L⁻ᵀ r with M⁻¹ = L Lᵀ has covariance L⁻ᵀ L⁻¹ = M
            self._momentum_factor = np.linalg.inv(np.linalg.cholesky(inverse_metric)).T
        else:
            self._momentum_factor = 1.0 / np.sqrt(inverse_metric)

    def _velocity(self, p):
        return self.inverse_metric @ p if self.dense else self.inverse_metric * p

    def _momentum(self):
        r = self.rng.standard_normal(self.dim)
        return self._momentum_factor @ r if self.dense else self._momentum_factor * r

    # -- dynamics
    def _leapfrog(self, s, eps):
        p = s.p - 0.5 * eps * s.grad
        z = s.z + eps * self._velocity(p)
        U, grad = self.potential(z)
        self.n_steps += 1
        if not np.all(np.isfinite(grad)):  # outside the density's domain: infinite energy, a divergence
            return _State(z, p, self._velocity(p), grad, np.inf)
        p = p - 0.5 * eps * grad
        return _State(z, p, self._velocity(p), grad, U)

    def _energy(self, s):
        return s.U + 0.5 * float(s.p @ s.p_sharp)

    def _build(self, s, depth, eps, H0):
        """A subtree of 2^depth leapfrog steps from s (direction: the sign of eps), or None where it
        diverges or turns (then it is not sampled from and the trajectory stops)."""
        if depth == 0:
            new = self._leapfrog(s, eps)
            delta = self._energy(new) - H0
            if math.isnan(delta):
                delta = math.inf
            self.sum_accept += math.exp(-delta) if delta > 0 else 1.0
            if delta > MAX_DELTA_H:
                self.diverging = True
                return None
            return _Tree(new, new, new.p, -delta, new)
        inner = self._build(s, depth - 1, eps, H0)
        if inner is None:
            return None
        outer = self._build(inner.right if eps > 0 else inner.left, depth - 1, eps, H0)
        if outer is None:
            return None
        log_weight = np.logaddexp(inner.log_weight, outer.log_weight)
        # uniform progressive sampling within a subtree: the outer half's point with its share of weight
        take_outer = self.rng.random() < math.exp(outer.log_weight - log_weight)
        proposal = outer.proposal if take_outer else inner.proposal
        left, right = (inner, outer) if eps > 0 else (outer, inner)
        rho = left.rho + right.rho
        if _turns(left, right, rho):
            return None
        return _Tree(left.left, right.right, rho, log_weight, proposal)

    def transition(self, s, eps):
        """One NUTS draw from state s (z, gradient and U; p is drawn here). Returns the new state and the
        stats: (accept statistic, diverging, tree depth, leapfrog steps)."""
        p = self._momentum()
        s = _State(s.z, p, self._velocity(p), s.grad, s.U)
        H0 = self._energy(s)
        tree = _Tree(s, s, p, 0.0, s)
        self.n_steps, self.sum_accept, self.diverging = 0, 0.0, False
        depth = 0
        while depth < self.max_depth:
            forward = self.rng.random() < 0.5
            sub = self._build(tree.right if forward else tree.left, depth, eps if forward else -eps, H0)
            if sub is None:
                break
            depth += 1
            # biased progressive sampling: move to the new subtree with probability min(1, W_new / W_old)
            proposal = tree.proposal
            if sub.log_weight > tree.log_weight or self.rng.random() < math.exp(sub.log_weight - tree.log_weight):
                proposal = sub.proposal
            left, right = (tree, sub) if forward else (sub, tree)
            rho = left.rho + right.rho
            tree = _Tree(left.left, right.right, rho, np.logaddexp(tree.log_weight, sub.log_weight), proposal)
            if _turns(left, right, rho):
                break
        accept = self.sum_accept / max(self.n_steps, 1)
        return tree.proposal, (accept, self.diverging, depth, self.n_steps)

    def _find_step_size(self, s, eps):
        """Stan's heuristic: from one leapfrog step's acceptance at ε, a direction (up if above 0.8);
        then double (or halve) ε until a step's acceptance crosses 0.8, with a fresh momentum each try."""

        def log_accept(eps):
            p = self._momentum()
            start = _State(s.z, p, self._velocity(p), s.grad, s.U)
            delta = self._energy(start) - self._energy(self._leapfrog(start, eps))  # H₀ - H
            return -math.inf if math.isnan(delta) else delta

        up = log_accept(eps) > math.log(0.8)
        for _ in range(100):
            if (log_accept(eps) > math.log(0.8)) != up:
                break
            eps = eps * 2.0 if up else eps / 2.0
            if not 1e-10 < eps < 1e7:  # a flat or a broken density: let dual averaging take over
                return min(max(eps, 1e-10), 1e7)
        return eps

    # -- a whole chain
    def run(self, z0, num_warmup, num_samples, seed, tick):
        """Warm-up and draws from z0 (numpy float64 [d]) with RNG seed ``seed``; ``tick()`` after each
        iteration. Returns numpy arrays: "z" [num_samples, d] and the per-draw stats, and the final ε."""
        self.rng = np.random.default_rng(seed)
        self.n_steps = 0
        identity = np.eye(self.dim) if self.dense else np.ones(self.dim)
        metric = identity if self.initial_metric is None else self.initial_metric
        self._set_metric(metric)
        U, grad = self.potential(z0)
        state = _State(z0, None, None, grad, U)
        eps = self._find_step_size(state, 1.0)
        adapt = DualAveraging(eps, self.delta)
        windows = adaptation_windows(num_warmup)
        window_draws = []
        for i in range(num_warmup):
            state, (accept, *_) = self.transition(state, eps)
            eps = adapt.update(accept)
            if windows and windows[0][0] <= i < windows[0][1]:
                window_draws.append(state.z)
                if i == windows[0][1] - 1:  # end of a slow window: a new metric, ε found anew
                    windows.pop(0)
                    self._set_metric(regularised(np.array(window_draws), self.dense))
                    window_draws = []
                    eps = self._find_step_size(state, eps)
                    adapt = DualAveraging(eps, self.delta)
            tick()
        if num_warmup:
            eps = adapt.final()
        out = {
            "z": np.empty((num_samples, self.dim)),
            "diverging": np.zeros(num_samples, dtype=bool),
            "step_size": np.full(num_samples, eps),
            "acceptance_rate": np.empty(num_samples),
            "lp": np.empty(num_samples),
            "tree_depth": np.empty(num_samples, dtype=np.int64),
            "n_steps": np.empty(num_samples, dtype=np.int64),
        }
        for i in range(num_samples):
            state, (accept, diverging, depth, n_steps) = self.transition(state, eps)
            out["z"][i], out["lp"][i] = state.z, -state.U
            out["acceptance_rate"][i], out["diverging"][i] = accept, diverging
            out["tree_depth"][i], out["n_steps"][i] = depth, n_steps
            tick()
        out["final_step_size"] = float(eps)
        return out


class DualAveraging:
    """Nesterov's dual averaging of log ε toward a mean acceptance statistic δ (Hoffman & Gelman 2014,
    Stan's constants), restarted from μ = log(10 ε₀)."""

    GAMMA, T0, KAPPA = 0.05, 10.0, 0.75

    def __init__(self, eps, delta):
        self.mu, self.delta = math.log(10 * eps), delta
        self.t, self.s_bar, self.x_bar = 0, 0.0, 0.0

    def update(self, accept):
        self.t += 1
        eta = 1.0 / (self.t + self.T0)
        self.s_bar = (1 - eta) * self.s_bar + eta * (self.delta - min(1.0, accept))
        x = self.mu - self.s_bar * math.sqrt(self.t) / self.GAMMA
        weight = self.t**-self.KAPPA
        self.x_bar = (1 - weight) * self.x_bar + weight * x
        return math.exp(x)

    def final(self):
        return math.exp(self.x_bar)


def adaptation_windows(num_warmup):
    """Stan's slow adaptation windows [(start, end)] of warm-up iterations (end exclusive)."""
    if num_warmup < 20:
        return []
    init, term, base = 75, 50, 25
    if init + base + term > num_warmup:
        init, term = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base = num_warmup - init - term
    last, start, size, windows = num_warmup - term, init, base, []
    while start < last:
        end = min(start + size, last)
        if end + 2 * size > last:  # the next (doubled) window would not fit: this one takes the rest
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def regularised(draws, dense):
    """The window's (co)variance, shrunk toward 10⁻³ I by 5 pseudo-draws (Stan's regularisation)."""
    n = draws.shape[0]
    if dense:
        cov = np.cov(draws, rowvar=False).reshape(draws.shape[1], draws.shape[1])
        return (n / (n + 5.0)) * cov + 1e-3 * (5.0 / (n + 5.0)) * np.eye(draws.shape[1])
    return (n / (n + 5.0)) * draws.var(axis=0, ddof=1) + 1e-3 * (5.0 / (n + 5.0))
