"""VAE / beta-VAE: the Pyro pair, the exact cases of the evaluation, training, bad input, figures.

The exactness tests use a linear-Gaussian VAE (probabilistic PCA): decoder x = W z + b + σ ε with
orthogonal columns of W, so the exact posterior is a diagonal Gaussian that a linear encoder can hold
and log p(x) = log N(x; b, W Wᵀ + σ² I) is known in closed form (MATH.md §3, §1: ELBO = log p(x) when
q is the posterior).
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import inference
import zoo
from inference.errors import InvalidInputError, NonFiniteError
from zoo.data import digits, shapes
from zoo.vae import VAE, BetaVAE, iwae_bound, kl_decomposition

D, L, SIGMA = 4, 2, 0.5


def ppca(beta=1.0, exact=True):
    """A linear VAE with known W, b, σ and, if ``exact``, its encoder set to the exact posterior."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, L))
    a = torch.tensor([2.0, 1.0])
    w, b = q * a, torch.tensor([0.5, -1.0, 0.0, 1.0])
    vae = VAE(latent_dim=L, architecture="mlp", hidden=(), likelihood="gaussian", beta=beta).build((D,))
    m = torch.diag(a**2 + SIGMA**2)  # Wᵀ W + σ² I (diagonal: W has orthogonal columns)
    post_w = torch.linalg.solve(m, w.T)  # E[z | x] = M⁻¹ Wᵀ (x − b)
    post_sd = SIGMA / torch.sqrt(torch.diag(m))  # Cov[z | x] = σ² M⁻¹
    if not exact:
        post_sd = 1.5 * post_sd  # a wider proposal: IWAE bounds are strict
    with torch.no_grad():
        head, dec = vae.encoder_.head, vae.decoder_
        head.weight.copy_(torch.cat([post_w, torch.zeros(L, D)]))
        head.bias.copy_(torch.cat([-post_w @ b, torch.log(torch.expm1(post_sd))]))  # softplus⁻¹
        dec.net.net[0].weight.copy_(w)
        dec.net.net[0].bias.copy_(b)
        dec.log_scale.fill_(math.log(SIGMA))
    x = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D)).sample((50,))
    log_px = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    return vae, x, log_px


def test_exact_posterior_makes_every_bound_equal_log_evidence():
    vae, x, log_px = ppca()
    lw = vae.log_weights(x, k=20)
    assert lw.shape == (20, 50)
    # with q = p(z|x) every importance weight equals p(x): zero variance
    torch.testing.assert_close(lw, log_px.expand(20, 50), atol=1e-4, rtol=0)
    # the analytic-KL ELBO is exact in its KL part; its reconstruction part is Monte Carlo (sd < 1 per point)
    assert vae.elbo(x, num_samples=4000) == pytest.approx(log_px.mean().item(), abs=4 / math.sqrt(50 * 4000))
    assert vae.iwae(x, k=7) == pytest.approx(log_px.mean().item(), abs=1e-4)
    # the Pyro pair computes the same: Trace_ELBO's loss is -Σ log p(x_n), exactly
    assert Trace_ELBO().loss(vae.model, vae.guide, x) == pytest.approx(-log_px.sum().item(), rel=1e-5)


def test_iwae_rises_with_k_towards_log_evidence_and_bounds_the_elbo():
    vae, x, log_px = ppca(exact=False)
    lw = vae.log_weights(x, k=2000, seed=1)
    bounds = [iwae_bound(lw[:k]).mean().item() for k in (1, 10, 100, 2000)]
    truth = log_px.mean().item()
    # E log w = ELBO (the analytic-KL estimate with many draws agrees to its Monte Carlo error)
    rec, kl = vae.elbo_parts(x, num_samples=2000, seed=2)
    elbo = (rec - kl).mean().item()
    se = lw[0].std().item() / math.sqrt(50)
    assert bounds[0] == pytest.approx(elbo, abs=4 * se)
    assert elbo < bounds[1] < bounds[2] < bounds[3] <= truth + 1e-3
    assert truth - elbo > 0.05  # the proposal is visibly imperfect ...
    assert truth - bounds[3] < 0.1 * (truth - elbo)  # ... and K = 2000 closes most of the gap


def test_beta_scales_exactly_the_kl_term_in_model_and_guide():
    vae1, x, _ = ppca(beta=1.0, exact=False)
    vae3, _, _ = ppca(beta=3.0, exact=False)
    guide_tr = poutine.trace(vae3.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae3.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["scale"] == 3.0 and model_tr.nodes["z"]["scale"] == 3.0
    assert model_tr.nodes["x"]["scale"] == 1.0
    losses = []
    for vae in (vae1, vae3):
        pyro.set_rng_seed(5)  # the same z draw for both
        losses.append(TraceMeanField_ELBO().loss(vae.model, vae.guide, x))
    _, kl = vae1.elbo_parts(x)
    # -[E log p(x|z) - β KL]: the reconstruction term cancels, the KL term counts (3 - 1) times more
    assert losses[1] - losses[0] == pytest.approx(2 * kl.sum().item(), rel=1e-4)
    # beta = 1 is the VAE itself
    assert BetaVAE(beta=1.0).get_params() == VAE().get_params()


def test_kl_split_is_exact_for_posteriors_that_ignore_x():
    loc = torch.tensor([0.3, -1.0, 2.0]).expand(400, 3)
    scale = torch.tensor([0.5, 1.2, 0.9]).expand(400, 3)
    s = kl_decomposition(loc, scale)
    # q(z|x) = q(z) for every x: no information, no correlation, every nat of KL is dimension-wise
    assert s["mutual_info"] == pytest.approx(0.0, abs=1e-5)
    assert s["total_correlation"] == pytest.approx(0.0, abs=1e-5)
    assert s["dimwise_kl"] == pytest.approx(s["kl"], abs=1e-5)


def test_kl_split_adds_up_and_finds_the_mutual_information_of_two_clusters():
    # half the data encode to (10, 10), half to (-10, -10): I(x;z) = log 2 and z1, z2 share that bit (TC = log 2)
    n = 1000
    loc = torch.cat([torch.full((n // 2, 2), 10.0), torch.full((n // 2, 2), -10.0)])
    scale = torch.ones(n, 2)
    s = kl_decomposition(loc, scale, seed=3)
    assert s["mutual_info"] == pytest.approx(math.log(2), abs=1e-3)
    assert s["total_correlation"] == pytest.approx(math.log(2), abs=1e-3)
    assert s["mutual_info"] + s["marginal_kl"] == pytest.approx(s["kl"], abs=1e-4)
    assert s["total_correlation"] + s["dimwise_kl"] == pytest.approx(s["marginal_kl"], abs=1e-4)
    assert s["kl_exact"] == pytest.approx(100.0)  # ½ (10² + 10²) per point, closed form
    # the sampled whole estimates the closed form: log q(z|x) - log p(z) = ½|μ|² + μ·ε, sd |μ| = 10·√2
    assert s["kl"] == pytest.approx(s["kl_exact"], abs=4 * 10 * math.sqrt(2) / math.sqrt(n))
    assert sum(s["kl_per_dim"]) == pytest.approx(s["kl_exact"])


def test_kl_split_of_a_trained_vae_adds_up_to_its_average_kl():
    x_train, x_test, _, _ = digits()
    vae = VAE(latent_dim=4, hidden=(64,)).fit(x_train, epochs=3, progress=False)
    s = vae.kl_split(x_test)
    _, kl = vae.elbo_parts(x_test)
    assert s["kl_exact"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert 0 <= s["mutual_info"] <= math.log(len(x_test)) + 1e-4
    assert s["total_correlation"] >= -1e-3
    assert s["mutual_info"] + s["total_correlation"] + s["dimwise_kl"] == pytest.approx(s["kl"], abs=1e-3)


def test_training_improves_the_test_elbo_and_early_stopping_keeps_the_best():
    x_train, x_test, _, _ = digits()
    vae = VAE(latent_dim=8, hidden=(128,))
    vae.build(x_train.shape[1:])
    before = vae.elbo(x_test)
    vae.fit(x_train, x_test, epochs=15, batch_size=128, lr=3e-3, patience=3, progress=False)
    after = vae.elbo(x_test, num_samples=10)
    # The best model whose pixels ignore z: independent Bernoullis at the training means. The ELBO is a lower
    # bound on the VAE's log p(x), so beating this log-likelihood means the latents carry information.
    p = x_train.mean(0).clamp(1e-6, 1 - 1e-6)
    independent_pixels = (x_test * p.log() + (1 - x_test) * (1 - p).log()).sum(1).mean().item()
    assert before < after and after > independent_pixels
    assert vae.losses_.shape == (vae.fit_.losses.size,) and vae.losses_.size <= 15 * (len(x_train) // 128)
    val = vae.fit_.diagnostics["validation_losses"]
    assert len(val) == len(vae.history_["epoch"])
    best = min(v for _, v in val)
    # held-out loss on the training scale (x N_train) at the kept parameters is the best one seen
    assert -vae.elbo(x_test, num_samples=50) * len(x_train) == pytest.approx(best, rel=0.02)


def test_a_larger_beta_keeps_fewer_nats_in_z_and_reconstructs_worse():
    # Rate-distortion (MATH.md §3): at the optimum of E log p(x|z) - beta KL, the rate KL cannot rise and the
    # reconstruction cannot improve as beta grows (if beta_2 > beta_1, adding the two optimality conditions
    # gives (beta_2 - beta_1)(KL_1 - KL_2) >= 0). Same data, networks, seed and steps for beta = 1 and 8.
    # Whether the beta-VAE also disentangles better (MIG) is seed-dependent at a CPU budget: that comparison,
    # with its spread over seeds, is benchmarks/vae_disentanglement.py.
    x_train, _, _, _ = digits()
    parts = {}
    for beta in (1.0, 8.0):
        vae = VAE(latent_dim=4, hidden=(64,), beta=beta).fit(x_train, epochs=5, lr=3e-3, seed=0, progress=False)
        rec, kl = vae.elbo_parts(x_train, num_samples=4)
        parts[beta] = rec.mean().item(), kl.mean().item()
    (rec1, kl1), (rec8, kl8) = parts[1.0], parts[8.0]
    assert kl8 < kl1 and rec8 < rec1, parts


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    x_train, _, _, _ = digits()
    x = x_train[:512]
    # "meanfield": a jit ELBO compiles on its first step, which draws extra random numbers at a different
    # step in a resumed run, so only the uncompiled estimator can reproduce the run draw for draw
    kw = {"batch_size": 128, "seed": 1, "progress": False, "elbo": "meanfield"}
    full = VAE(latent_dim=3, hidden=(32,)).fit(x, epochs=4, **kw)
    ck = tmp_path / "vae.pt"
    first = VAE(latent_dim=3, hidden=(32,)).fit(x, epochs=2, checkpoint=ck, **kw)
    assert first.losses_.size == 8 and ck.is_file()
    resumed = VAE(latent_dim=3, hidden=(32,)).fit(x, epochs=4, checkpoint=ck, resume=True, **kw)
    torch.testing.assert_close(torch.tensor(resumed.losses_), torch.tensor(full.losses_))
    path = resumed.save(tmp_path / "model.pt")
    again = VAE.load(path)
    torch.testing.assert_close(again.encode(x[:5])[0], resumed.encode(x[:5])[0])


def test_kl_annealing_ramps_the_weight_and_needs_a_non_jit_elbo():
    x_train, _, _, _ = digits()
    vae = VAE(latent_dim=3, hidden=(32,), beta=2.0, anneal_epochs=2)
    seen = []
    original = vae.model

    def spy(x):
        seen.append(vae.kl_weight)
        return original(x)

    vae.model = spy
    vae.fit(x_train[:256], epochs=3, batch_size=128, progress=False)
    steps = seen[1:]  # the first call creates the parameters
    assert steps[:5] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert vae.kl_weight == 2.0
    with pytest.raises(InvalidInputError, match="anneal"):
        VAE(anneal_epochs=1).fit(x_train[:256], epochs=1, elbo="jit-trace", progress=False)


@pytest.mark.parametrize("likelihood", ["continuous_bernoulli", "gaussian"])
def test_other_likelihoods_train(likelihood):
    x_train, x_test, _, _ = digits()
    vae = VAE(latent_dim=4, hidden=(64,), likelihood=likelihood)
    vae.build(x_train.shape[1:])
    before = vae.elbo(x_test)
    vae.fit(x_train, epochs=4, lr=3e-3, progress=False)
    assert vae.elbo(x_test) > before
    # on the same draws the IWAE bound is at least the mean log weight (Jensen: log-mean-exp >= mean of logs)
    lw = vae.log_weights(x_test, k=20)
    assert (iwae_bound(lw) >= lw.mean(0) - 1e-5).all()


def test_bad_input_raises_clear_errors():
    x_train, _, _, _ = digits()
    with pytest.raises(InvalidInputError, match="beta"):
        VAE(beta=0)
    with pytest.raises(InvalidInputError, match="beta"):
        BetaVAE(beta=-1.0)
    with pytest.raises(InvalidInputError, match="latent_dim"):
        VAE(latent_dim=0)
    with pytest.raises(InvalidInputError, match="likelihood"):
        VAE(likelihood="poisson")
    bad = x_train.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        VAE().fit(bad, epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        VAE().fit(x_train * 16, epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="channels, height, width"):
        VAE(architecture="conv").fit(x_train, epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="channel dim"):
        VAE(architecture="conv").fit(x_train.reshape(-1, 8, 8), epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="too small"):
        VAE(hidden=(8, 8, 8, 8)).fit(x_train.reshape(-1, 1, 8, 8), epochs=1, progress=False)
    vae = VAE(latent_dim=2, hidden=(16,)).fit(x_train[:256], epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="built for"):
        vae.elbo(torch.rand(10, 49))
    with pytest.raises(InvalidInputError, match="no networks"):
        VAE().decode(torch.zeros(1, 10))


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_non_finite_loss_raises():
    x_train, _, _, _ = digits()
    vae = VAE(latent_dim=2, hidden=(16,)).build(x_train.shape[1:])
    with torch.no_grad():
        vae.decoder_.net.net[0].weight[0, 0] = float("nan")  # what a diverged step leaves behind
    with pytest.raises(NonFiniteError, match="step 0"):
        # the networks as they are (fit would re-initialise them), through the same training loop
        inference.svi(vae.model, vae.guide, x_train, steps=2, batch_size=128, elbo="jit-trace", progress=False)


def test_device_follows_the_data():
    x_train, _, _, _ = digits()
    vae = VAE(latent_dim=2, hidden=(16,)).to("cpu").fit(x_train[:256], epochs=1, progress=False)
    assert next(vae.encoder_.parameters()).device.type == "cpu"
    with pytest.raises(InvalidInputError, match="networks are on cpu"):
        vae.model(x_train[:4].to("meta"))
    if torch.cuda.is_available():
        vae = VAE(latent_dim=2, hidden=(16,)).fit(x_train[:256].cuda(), epochs=1, progress=False)
        assert next(vae.decoder_.parameters()).is_cuda
        assert math.isfinite(vae.iwae(x_train[:64].cuda(), k=5))


def test_figures(tmp_path):
    from zoo import vae as vae_mod

    x, _ = shapes(256, size=16, seed=2)
    vae = VAE(latent_dim=3, hidden=(8, 8)).fit(x, x[:64], epochs=2, batch_size=64, progress=False)
    figs = {
        "recon": vae_mod.plot_reconstructions(vae, x),
        "samples": vae_mod.plot_samples(vae, 16),
        "traversals": vae_mod.plot_traversals(vae, x[:1], n_steps=5),
        "kl": vae_mod.plot_kl_per_dim(vae.kl_split(x)),
        "losses": vae_mod.plot_losses(vae),
    }
    assert len(figs["traversals"].axes) == 3 * 5  # one row per latent dimension
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_public_names():
    assert zoo.VAE is VAE and zoo.BetaVAE is BetaVAE and BetaVAE().beta == 4.0
    assert all(callable(getattr(zoo.vae, name)) for name in zoo.vae.__all__)
    # BetaVAE takes every setting of VAE, by keyword, with beta = 4 by default
    settings = {"latent_dim": 3, "architecture": "mlp", "hidden": [8], "likelihood": "gaussian", "anneal_epochs": 1}
    assert BetaVAE(**settings).get_params() == VAE(**settings, beta=4.0).get_params()
    with pytest.raises(TypeError):
        BetaVAE(3, "mlp")
