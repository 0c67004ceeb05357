"""The FEP generative density, its Laplace free energy and the thermostat simulation (MATH.md §4, §4.1).

Over 400 lines because it holds the independent references the package is checked against: the energy
written out term by term, Gauss-Hermite quadrature of the free energy, autograd through the Pyro model, and
MATH.md §4.1's Euler loop transcribed in plain Python.
"""

import math

import numpy as np
import pytest
import torch

import inference
from inference.errors import InvalidInputError, NonFiniteError
from zoo import fep

D = torch.float64
LOG_2PI = math.log(2 * math.pi)


def energy_formula(mu, phi, sz, sw, f, df, g, dg):
    """E(μ̃, φ̃) of MATH.md §4 written out term by term (one agent, plain floats)."""
    order, nz = len(sw), len(sz)
    g_tilde = [g(mu[0])] + [dg(mu[0]) * mu[n] for n in range(1, nz)]
    f_tilde = [f(mu[0])] + [df(mu[0]) * mu[n] for n in range(1, order)]
    e = 0.0
    for n in range(nz):
        e += (phi[n] - g_tilde[n]) ** 2 / (2 * sz[n]) + 0.5 * math.log(sz[n])
    for n in range(order):
        e += (mu[n + 1] - f_tilde[n]) ** 2 / (2 * sw[n]) + 0.5 * math.log(sw[n])
    return e


CUBIC = (lambda m: 0.5 * m + 0.3 * m**3, lambda m: 0.5 + 0.9 * m**2)  # g and g'


def autograd_gradients(model, mu, phi):
    """(∂E/∂μ̃, ∂E/∂φ̃) by autograd through the Pyro model's log joint (E = −log p + a constant)."""
    mu, phi = mu.detach().requires_grad_(True), phi.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(-model.log_joint(mu, phi), (mu, phi))


class AutogradModel(fep.GenerativeModel):
    """The same G-density with its gradient by autograd through Pyro instead of by hand."""

    def gradients(self, mu, phi):
        return autograd_gradients(self, mu, phi)


def random_agents(seed, nonlinear, n_agents=4, order=3, nz=3):
    """A batched model with a different variance per agent and order, and random beliefs and sensations."""
    gen = torch.Generator().manual_seed(seed)
    f = (lambda m: torch.sin(m) - m) if nonlinear else fep.Affine(-1.0, 4.0)
    g = CUBIC[0] if nonlinear else fep.Affine(1.0, 0.0)
    sz = torch.rand(n_agents, nz, generator=gen, dtype=D) + 0.1
    sw = torch.rand(n_agents, order, generator=gen, dtype=D) + 0.1
    mu = torch.randn(n_agents, order + 1, generator=gen, dtype=D)
    phi = torch.randn(n_agents, nz, generator=gen, dtype=D)
    return (f, g, sz, sw), mu, phi


@pytest.mark.parametrize("order,nz,nonlinear", [(1, 1, False), (2, 2, False), (2, 3, True), (3, 2, True)])
def test_pyro_log_joint_is_the_laplace_encoded_energy(order, nz, nonlinear):
    gen = torch.Generator().manual_seed(order * 10 + nz)
    mu = torch.randn(order + 1, generator=gen, dtype=D)
    phi = torch.randn(nz, generator=gen, dtype=D)
    sz = (0.05 + torch.rand(nz, generator=gen, dtype=D)).tolist()  # a different variance per order
    sw = (0.05 + torch.rand(order, generator=gen, dtype=D)).tolist()
    g, dg = CUBIC if nonlinear else (lambda m: m, lambda m: 1.0)
    model = fep.GenerativeModel(fep.Affine(-1.0, 4.0), g, sigma_z=sz, sigma_w=sw, order=order)
    expected = energy_formula(mu.tolist(), phi.tolist(), sz, sw, lambda m: -m + 4, lambda m: -1.0, g, dg)
    assert model.energy(mu, phi).item() == pytest.approx(expected, rel=1e-12)
    # Pyro's Normal densities carry ½ ln 2π per factor: (n_sensory + order) of them; μ[0] is flat
    log_joint = model.log_joint(mu, phi).item()
    assert -log_joint == pytest.approx(expected + (nz + order) / 2 * LOG_2PI, rel=1e-12)
    # the ln σ terms are part of it: doubling every variance changes E by ½ ln 2 per factor at zero error
    assert model.energy(mu, phi, constants=False).item() == pytest.approx(
        expected - 0.5 * (sum(map(math.log, sz)) + sum(map(math.log, sw))), rel=1e-12
    )


def test_guide_is_a_delta_at_the_beliefs():
    from pyro import poutine

    model = fep.GenerativeModel.thermostat()
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    tr = poutine.trace(model.guide).get_trace(None, mu)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == ["mu_0", "mu_1", "mu_2"]
    assert torch.equal(torch.stack([tr.nodes[f"mu_{n}"]["value"] for n in range(3)]), mu)
    assert tr.log_prob_sum().item() == 0.0  # a point mass: log q = 0 at its own value


@pytest.mark.parametrize("nonlinear", [False, True])
def test_closed_form_gradient_equals_autograd_on_the_pyro_model(nonlinear):
    (f, g, sz, sw), mu, phi = random_agents(1, nonlinear)
    model = fep.GenerativeModel(f, g, sigma_z=sz, sigma_w=sw, order=3)  # 4 agents, batched
    closed = model.gradients(mu, phi)
    auto = autograd_gradients(model, mu, phi)
    for c, a in zip(closed, auto):
        torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_batched_hessian_equals_autograd_on_the_pyro_model_per_agent(nonlinear):
    (f, g, sz, sw), mu, phi = random_agents(5, nonlinear)
    hessians = fep.GenerativeModel(f, g, sigma_z=sz, sigma_w=sw, order=3).hessian(mu, phi)
    assert hessians.shape == (4, 4, 4)
    for b in range(4):
        agent = fep.GenerativeModel(f, g, sigma_z=sz[b], sigma_w=sw[b], order=3)
        expected = torch.autograd.functional.hessian(lambda m, agent=agent, p=phi[b]: -agent.log_joint(m, p), mu[b])
        torch.testing.assert_close(hessians[b], expected, rtol=1e-12, atol=1e-12)


def test_gradient_operator_is_exact_for_affine_models():
    gen = torch.Generator().manual_seed(2)
    model = fep.GenerativeModel.thermostat(
        torch.tensor([3.0, 4.0, 5.0], dtype=D), sigma_z=torch.rand(3, 2, generator=gen, dtype=D) + 0.05, sigma_w=0.2
    )
    w, b = model.gradient_operator()
    s = torch.randn(3, 5, generator=gen, dtype=D)
    expected = torch.cat(model.gradients(s[:, :3], s[:, 3:]), -1)
    torch.testing.assert_close((w @ s.unsqueeze(-1)).squeeze(-1) + b, expected, rtol=1e-12, atol=1e-12)


def gaussian_free_energy(model, mu, phi, zeta, points=40):
    """F_q = E_q[−log p(μ̃, φ̃)] − H[q] for q = N(mu, zeta), by Gauss–Hermite quadrature (exact for
    polynomial energies of degree < 2·points)."""
    x, w = np.polynomial.hermite_e.hermegauss(points)  # ∫ h(x) e^{−x²/2} dx
    x, w = torch.as_tensor(x, dtype=D), torch.as_tensor(w / w.sum(), dtype=D)
    k = mu.shape[-1]
    grids = torch.meshgrid(*[x] * k, indexing="ij")
    weights = torch.ones([points] * k, dtype=D)
    for i, gw in enumerate(torch.meshgrid(*[w] * k, indexing="ij")):
        weights = weights * gw
    z = torch.stack([gr.reshape(-1) for gr in grids], -1)
    samples = mu + z @ torch.linalg.cholesky(zeta).T
    e = model.energy(samples, phi.expand(samples.shape[0], -1)) + (model.n_sensory + model.order) / 2 * LOG_2PI
    entropy = 0.5 * (k * (1 + LOG_2PI) + torch.logdet(zeta))
    return (weights.reshape(-1) * e).sum() - entropy


def test_laplace_free_energy_is_exact_for_a_quadratic_energy():
    model = fep.GenerativeModel.thermostat(sigma_z=[0.1, 0.3], sigma_w=[0.2, 0.05])
    mu, phi = torch.tensor([3.0, -1.0, 0.5], dtype=D), torch.tensor([19.0, 0.4], dtype=D)
    lap = model.laplace(mu, phi)
    torch.testing.assert_close(lap["zeta"] @ lap["hessian"], torch.eye(3, dtype=D), rtol=0, atol=1e-12)
    assert lap["potential"].item() == pytest.approx(-model.log_joint(mu, phi).item(), rel=1e-12)
    # the project's Laplace (inference.laplace, on the Pyro model) at the same point gives the same Gaussian
    d = inference.laplace(
        model.model, phi, init=model.sites(mu), optimize=False, max_plate_nesting=0, check=False
    ).diagnostics
    order = torch.cat([torch.arange(d["sites"][f"mu_{n}"].start, d["sites"][f"mu_{n}"].stop) for n in range(3)])
    torch.testing.assert_close(
        torch.as_tensor(d["hessian"], dtype=D)[order][:, order], lap["hessian"], rtol=1e-12, atol=1e-12
    )
    assert lap["free_energy"].item() == pytest.approx(
        d["potential"] - 0.5 * (3 * LOG_2PI - d["log_det_hessian"]), rel=1e-12
    )
    f_q = gaussian_free_energy(model, mu, phi, lap["zeta"]).item()
    assert lap["free_energy"].item() == pytest.approx(f_q, rel=1e-10)
    # MATH.md's F (E without the 2π constants) differs by exactly those constants
    assert model.free_energy(mu, phi).item() == pytest.approx(
        lap["free_energy"].item() - (2 + 2) / 2 * LOG_2PI, rel=1e-12
    )


def test_laplace_is_batched_and_undefined_where_the_curvature_is_not_positive():
    # g(μ) = μ², order 1: at μ̃ = 0, ∂²E/∂μ² = (g'² − ε_z g'') / σ_z + f'² / σ_w = −2φ + 1 (σ = 1, f' = −1), and
    # the μ' rows are those of ε_w = μ' + μ − 4: H = [[1 − 2φ, 1], [1, 1]], det H = −2φ: PD exactly when φ < 0
    model = fep.GenerativeModel(fep.Affine(-1.0, 4.0), lambda m: m**2, sigma_z=1.0, sigma_w=1.0, order=1, n_sensory=1)
    mu, phi = torch.zeros(2, 2, dtype=D), torch.tensor([[-10.0], [10.0]], dtype=D)
    lap = model.laplace(mu, phi)
    torch.testing.assert_close(
        lap["hessian"],
        torch.tensor([[[21.0, 1.0], [1.0, 1.0]], [[-19.0, 1.0], [1.0, 1.0]]], dtype=D),
        rtol=0,
        atol=1e-12,
    )
    assert lap["free_energy"][0].item() == pytest.approx(
        lap["potential"][0].item() - 0.5 * (2 * LOG_2PI - math.log(20.0)), rel=1e-12
    )
    assert torch.isnan(lap["free_energy"][1]) and torch.isnan(lap["zeta"][1]).all()
    assert torch.isfinite(lap["zeta"][0]).all() and torch.isnan(model.free_energy(mu, phi)[1])
    single = model.laplace(mu[0], phi[0])
    for name in ("hessian", "zeta", "potential", "free_energy"):
        torch.testing.assert_close(lap[name][0], single[name], rtol=1e-12, atol=0)


def test_laplace_free_energy_is_second_order_accurate_for_a_non_quadratic_energy():
    # g cubic: E is a degree-6 polynomial in μ̃, so quadrature is exact and, q being Gaussian (odd central
    # moments vanish), F_q − F = Δ4 + Δ6 with Δ4 = ⅛ Σ E_ijkl ζ_ij ζ_kl the leading neglected term
    model = fep.GenerativeModel(fep.Affine(-1.0, 1.0), CUBIC[0], sigma_z=[0.02, 0.05], sigma_w=[0.05], order=1)
    mu, phi = torch.tensor([0.9, 0.1], dtype=D), torch.tensor([0.65, 0.2], dtype=D)
    lap = model.laplace(mu, phi)
    zeta = lap["zeta"]
    f_q = gaussian_free_energy(model, mu, phi, zeta).item()
    error = f_q - lap["free_energy"].item()

    def curvature_along_zeta(m):
        h = torch.autograd.functional.hessian(lambda v: model.energy(v, phi), m, create_graph=True)
        return (zeta * h).sum()

    delta4 = 0.125 * (zeta * torch.autograd.functional.hessian(curvature_along_zeta, mu)).sum().item()
    assert abs(error) > 1e-4  # the energy is genuinely non-quadratic here ...
    assert error == pytest.approx(delta4, rel=0.1)  # ... and the error is the predicted 4th-order term
    # halving every variance halves ζ* and doubles E (E ∝ 1/σ): Δ4 ∝ E⁗ ζ*² ∝ σ halves, while Δ6 ∝ σ²
    # falls faster, so the error halves to within Δ6's share
    half = fep.GenerativeModel(fep.Affine(-1.0, 1.0), CUBIC[0], sigma_z=[0.01, 0.025], sigma_w=[0.025], order=1)
    lap_half = half.laplace(mu, phi)
    error_half = gaussian_free_energy(half, mu, phi, lap_half["zeta"]).item() - lap_half["free_energy"].item()
    assert error_half / error == pytest.approx(0.5, abs=0.05)


# ---- the thermostat simulation against an independent transcription of MATH.md §4.1 --------------------


def reference_run(
    T_desire=4.0,
    sz=(0.1, 0.1),
    sw=(0.1, 0.1),
    k_mu=0.1,
    k_a=0.01,
    dt=0.005,
    t_end=100.0,
    onset=25.0,
    x_start=2.0,
    T0=100.0,
):
    """MATH.md §4.1 as written: every update at step i uses the previous step's sensations and beliefs."""
    n = round(t_end / dt) + 1
    col = {c: np.zeros(n) for c in ("x", "T", "phi0", "phi1", "mu0", "mu1", "mu2", "a", "F")}
    x, x_dot = x_start, 0.0
    T = T0 / (x**2 + 1)
    phi0, phi1 = T, 0.0
    mu0 = mu1 = mu2 = a = 0.0
    for i in range(n):
        if i > 0:
            ez0, ez1 = phi0 - mu0, phi1 - mu1
            ew0, ew1 = mu1 + mu0 - T_desire, mu2 + mu1
            x_dot = a
            x = x + dt * x_dot
            T = T0 / (x**2 + 1)
            T_x = -2 * T0 * x / (x**2 + 1) ** 2
            phi0, phi1 = T, T_x * x_dot
            mu0, mu1, mu2 = (
                mu0 + dt * (mu1 - k_mu * (-ez0 / sz[0] + ew0 / sw[0])),
                mu1 + dt * (mu2 - k_mu * (-ez1 / sz[1] + ew0 / sw[0] + ew1 / sw[1])),
                mu2 + dt * (-k_mu * (ew1 / sw[1])),
            )
            a = a + dt * (-k_a * T_x * ez1 / sz[1]) if i * dt > onset else 0.0
        ez0, ez1, ew0, ew1 = phi0 - mu0, phi1 - mu1, mu1 + mu0 - T_desire, mu2 + mu1
        F = 0.5 * (ez0**2 / sz[0] + ez1**2 / sz[1] + ew0**2 / sw[0] + ew1**2 / sw[1])
        for c, v in zip(col, (x, T, phi0, phi1, mu0, mu1, mu2, a, F)):
            col[c][i] = v
    return col


COLUMNS = {
    "x": "position",
    "T": "T",
    "phi0": "phi",
    "phi1": "phi'",
    "mu0": "mu",
    "mu1": "mu'",
    "mu2": "mu''",
    "a": "a",
    "F": "F",
}


@pytest.fixture(scope="module")
def paper_run():
    return fep.simulate(progress=False)


def test_deterministic_run_follows_the_papers_euler_scheme(paper_run):
    ref = reference_run()
    assert len(paper_run) == 20001 and np.allclose(paper_run["t"], np.arange(20001) * 0.005)
    for r, c in COLUMNS.items():
        # the same arithmetic up to the order of floating-point operations: 20 000 steps of a contracting
        # scheme accumulate round-off far below 1e-9 of the values' scale
        np.testing.assert_allclose(paper_run[c], ref[r], rtol=1e-9, atol=1e-9 * np.abs(ref[r]).max(), err_msg=c)


def test_deterministic_run_shows_the_papers_numbers(paper_run):
    d = paper_run
    perception = d[d["t"] <= 25]
    assert d["F"].iloc[0] == pytest.approx(20**2 / 0.2 + 4**2 / 0.2)  # 2080
    assert perception["mu"].iloc[-1] == pytest.approx(12.0, abs=1e-3)  # halfway from 20 to 4
    assert perception["F"].iloc[-1] == pytest.approx(498, abs=0.5)
    assert (perception["a"] == 0).all() and (perception["position"] == 2.0).all()
    after = d[d["t"] > 25]
    assert after["T"].min() < 4 < after["T"].max()  # overshoot below 4
    assert (np.diff(np.sign(after["a"].to_numpy())) != 0).sum() >= 2  # damped oscillation of a
    assert abs(d["T"].iloc[-1] - 4) < 0.06 and d["F"].iloc[-1] < 0.05
    # the Laplace free energy E − ½ ln det(2π ζ*) is a constant offset from the paper's F for this agent: E is
    # quadratic, with ∂ε/∂(μ, μ', μ'') = (−1, 0, 0), (0, −1, 0), (1, 1, 0), (0, 1, 1) for ε_z0, ε_z1, ε_w0, ε_w1,
    # so H = JᵀJ / σ = [[2, 1, 0], [1, 3, 1], [0, 1, 1]] / σ, det H = 3 / σ³; the ln σ terms add 4 · ½ ln σ
    offset = d["F_laplace"] - d["F"]
    assert np.ptp(offset) < 1e-9
    assert offset.iloc[0] == pytest.approx(2 * math.log(0.1) - 0.5 * (3 * LOG_2PI - math.log(3 / 0.1**3)), rel=1e-12)


def test_paths_agree_affine_map_per_step_gradient_and_autograd():
    kw = {"t_end": 0.6, "action_onset": 0.2, "progress": False}
    fast = fep.simulate(laplace=False, **kw)  # the thermostat: one affine map per step

    def run(model):
        return fep.to_table(fep.integrate(model, fep.ThermostatWorld(), **kw))

    plain = (lambda m: -m + 4.0, lambda m: 1.0 * m)  # plain functions: the gradient every step
    affine = (fep.Affine(-1.0, 4.0), fep.Affine(1.0, 0.0))
    cols = list(COLUMNS.values())
    for other in (run(fep.GenerativeModel(*plain)), run(AutogradModel(*plain)), run(AutogradModel(*affine))):
        np.testing.assert_allclose(other[cols], fast[cols], rtol=1e-11, atol=1e-11)


def test_batched_agents_equal_single_runs():
    kw = {"t_end": 40.0, "action_onset": 10.0, "record_every": 50, "progress": False, "laplace": False}
    sz = torch.tensor([[0.1, 0.1], [0.5, 0.2], [0.05, 0.3]], dtype=D)
    sw = torch.tensor([[0.1, 0.1], [0.2, 0.5], [1.0, 0.1]], dtype=D)
    T_desire, x0, k_a = torch.tensor([4.0, 6.0, 3.0]), torch.tensor([2.0, 1.5, 2.5]), torch.tensor([0.01, 0.02, 0.01])
    batch = fep.simulate(sigma_z=sz, sigma_w=sw, T_desire=T_desire, x0=x0, kappa_a=k_a, **kw)
    cols = list(COLUMNS.values())
    for k in range(3):
        single = fep.simulate(
            sigma_z=sz[k], sigma_w=sw[k], T_desire=float(T_desire[k]), x0=float(x0[k]), kappa_a=float(k_a[k]), **kw
        )
        mine = batch[batch["agent"] == k]
        np.testing.assert_allclose(mine[cols].to_numpy(), single[cols].to_numpy(), rtol=1e-12, atol=1e-12)
        ref = reference_run(
            T_desire=float(T_desire[k]),
            sz=sz[k].tolist(),
            sw=sw[k].tolist(),
            k_a=float(k_a[k]),
            t_end=40.0,
            onset=10.0,
            x_start=float(x0[k]),
        )
        np.testing.assert_allclose(mine["T"], ref["T"][::50], rtol=1e-9)


def test_sweep_grid_and_its_equal_precision_agent():
    kw = {"t_end": 30.0, "action_onset": 10.0, "record_every": 100, "progress": False}
    grid = fep.sweep([0.05, 0.1], [0.1, 0.5], **kw)
    assert set(zip(grid["sigma_z"], grid["sigma_w"])) == {(0.05, 0.1), (0.05, 0.5), (0.1, 0.1), (0.1, 0.5)}
    paper = fep.simulate(**kw)
    same = grid[(grid["sigma_z"] == 0.1) & (grid["sigma_w"] == 0.1)]
    np.testing.assert_allclose(same["T"], paper["T"], rtol=1e-12)


def test_noisy_mode_is_seeded_and_has_the_stated_noise():
    kw = {"t_end": 50.0, "noise": 0.1, "progress": False, "laplace": False}
    a, b, c = fep.simulate(seed=3, **kw), fep.simulate(seed=3, **kw), fep.simulate(seed=4, **kw)
    assert a.equals(b) and not a["phi"].equals(c["phi"])
    residual = (a["phi"] - a["T"]).to_numpy()
    assert residual[0] == 0.0  # the first sensation is noise-free (as the appendix)
    # sd of 10 000 draws: standard error 0.1 / sqrt(2 · 10 000) ≈ 0.0007; 5 standard errors
    assert residual[1:].std() == pytest.approx(0.1, abs=0.0035)
    assert abs(a[a["t"] <= 25]["mu"].iloc[-1] - 12) < 0.5  # perception still settles near 12


def test_divergence_is_reported_with_its_step():
    with pytest.raises(NonFiniteError, match=r"diverged at step (\d+) \(t = ") as info:
        fep.simulate(kappa_mu=50.0, t_end=10.0, action_onset=5.0, progress=False)
    step = int(info.value.args[0].split("step ")[1].split(" ")[0])
    # the step named is the first non-finite one: the run up to the step before it is finite
    t_end = (step - 1) * 0.005
    ok = fep.simulate(kappa_mu=50.0, t_end=t_end, action_onset=min(5.0, t_end), progress=False, laplace=False)
    assert np.isfinite(ok[["mu", "mu'", "mu''"]].to_numpy()).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma_z": 0.0}, "sigma_z"),
        ({"sigma_w": -1.0}, "sigma_w"),
        ({"sigma_z": [0.1, float("nan")]}, "sigma_z"),
        ({"sigma_z": [0.1, 0.1, 0.1]}, "sigma_z"),
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"action_onset": 200.0}, "action_onset"),
        ({"order": 0}, "order"),
        ({"order": 1.5}, "order"),
        ({"kappa_mu": -0.1}, "kappa_mu"),
        ({"noise": -1.0}, "noise"),
        ({"t_end": 0.0}, "t_end"),
        ({"sigma_z": torch.full((3, 2), 0.1), "kappa_a": torch.full((2,), 0.01)}, "number of agents"),
        ({"T_desire": float("inf")}, "T_desire"),
        ({"x0": float("nan")}, "x0"),
        ({"T0": 0.0}, "T0"),
        ({"record_every": 0}, "record_every"),
        ({"kappa_a": float("nan")}, "kappa_a"),
        ({"mu0": [0.0, 0.0]}, "mu0"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        fep.simulate(
            t_end=kwargs.pop("t_end", 1.0), action_onset=kwargs.pop("action_onset", 0.5), progress=False, **kwargs
        )


def test_higher_order_beliefs_run():
    d = fep.simulate(order=3, t_end=25.0, action_onset=25.0, record_every=500, progress=False)
    assert {"mu", "mu'", "mu''", "mu'''"} <= set(d.columns)
    assert np.isfinite(d[["mu", "mu'''", "F", "F_laplace"]].to_numpy()).all()


def test_figures(tmp_path, paper_run):
    import matplotlib.pyplot as plt

    fig = fep.plot_trajectories(paper_run, action_onset=25.0)
    assert len(fig.axes) == 5
    fig.savefig(tmp_path / "t.png")
    plt.close(fig)
    grid = fep.sweep([0.05, 0.1], [0.1], t_end=20.0, action_onset=10.0, record_every=100, progress=False)
    fig = fep.plot_sweep(grid)
    fig.savefig(tmp_path / "s.png")
    plt.close(fig)
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in ("t.png", "s.png"))
