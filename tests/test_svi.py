"""inference.svi on conjugate models with closed-form posteriors, its optimizers, minibatches, early
stopping, checkpoints and errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import NormalMean
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal, init_to_value

import inference
from inference.batches import EarlyStopping
from inference.draws import importance_weights
from inference.errors import CheckpointError, InvalidInputError, NonFiniteError

PRIOR_SD, NOISE_SD = 10.0, 1.0


NORMAL_MEAN = NormalMean(prior_loc=0.0, prior_scale=PRIOR_SD, noise=NOISE_SD)
normal_mean_model, exact_normal_mean = NORMAL_MEAN.model, NORMAL_MEAN.posterior


def regression_model(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), NOISE_SD), obs=y)  # vectorisable X @ w


def exact_regression(X, y):
    """Posterior of w: Σ = (X^T X / s^2 + I / s0^2)^-1, m = Σ X^T y / s^2."""
    cov = torch.linalg.inv(X.T @ X / NOISE_SD**2 + torch.eye(X.shape[1]) / PRIOR_SD**2)
    return cov @ X.T @ y / NOISE_SD**2, cov


@pytest.fixture
def x():
    return torch.randn(200, generator=torch.Generator().manual_seed(1)) + 3.0


def test_normal_mean_posterior_is_recovered(x):
    mean, sd = exact_normal_mean(x)
    fit = inference.svi(
        normal_mean_model, AutoNormal(normal_mean_model), x, steps=3000, lr=0.05, schedule="exponential", progress=False
    )
    # The guide family holds the exact posterior, so only optimisation noise separates them.
    loc = fit.params["AutoNormal.locs.mu"].item()
    scale = fit.params["AutoNormal.scales.mu"].item()
    assert abs(loc - mean) < 0.1 * sd
    assert abs(scale / sd - 1) < 0.1
    draws = fit.samples(4000, seed=0)["mu"]
    assert draws.shape == (4000,)
    # Monte-Carlo tolerance of 4000 draws: 4 standard errors of the mean.
    assert abs(draws.mean().item() - loc) < 4 * scale / math.sqrt(4000)


def test_full_rank_guide_recovers_regression_posterior():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(100, 3, generator=g)
    X[:, 1] += 0.8 * X[:, 0]  # correlated features: a correlated posterior
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + NOISE_SD * torch.randn(100, generator=g)
    mean, cov = exact_regression(X, y)
    fit = inference.svi(
        regression_model,
        AutoMultivariateNormal(regression_model),
        X,
        y,
        steps=1500,
        lr=0.1,
        schedule="cosine",
        lr_min=1e-4,
        num_particles=8,
        vectorize_particles=True,
        max_plate_nesting=1,
        progress=False,
    )
    draws = fit.samples(20000, seed=1)["w"]
    sd = cov.diagonal().sqrt()
    assert torch.all((draws.mean(0) - mean).abs() < 0.15 * sd)
    emp = torch.cov(draws.T)
    corr = cov / torch.outer(sd, sd)
    emp_corr = emp / torch.outer(emp.diagonal().sqrt(), emp.diagonal().sqrt())
    assert torch.allclose(emp.diagonal().sqrt() / sd, torch.ones(3), atol=0.15)
    assert torch.allclose(emp_corr, corr, atol=0.1)


@pytest.mark.parametrize(
    "name,lr",
    [("sgd", 0.01), ("momentum", 0.005), ("nesterov", 0.005), ("rmsprop", 0.05), ("adam", 0.1), ("clipped-adam", 0.1)],
)
def test_every_optimizer_reaches_the_map(name, lr):
    # A Delta guide makes the loss deterministic: -log p(x, mu), minimised at the posterior mode,
    # which equals the posterior mean for this Gaussian model.
    x = torch.randn(20, generator=torch.Generator().manual_seed(3)) + 2.0
    mode, sd = exact_normal_mean(x)
    fit = inference.svi(
        normal_mean_model,
        AutoDelta(normal_mean_model),
        x,
        steps=600,
        lr=lr,
        optimizer=name,
        schedule="cosine" if name != "sgd" else None,
        progress=False,
    )
    assert abs(fit.params["AutoDelta.mu"].item() - mode) < 1e-2 * sd
    assert fit.losses[-1] <= fit.losses[0]


def test_gradient_clipping_bounds_the_step(x):
    def step_length(clip):
        guide = AutoDelta(normal_mean_model, init_loc_fn=init_to_value(values={"mu": torch.tensor(0.0)}))
        fit = inference.svi(
            normal_mean_model, guide, x, steps=1, lr=1.0, optimizer="sgd", clip_norm=clip, init="guide", progress=False
        )
        return abs(fit.params["AutoDelta.mu"].item() - 0.0)

    assert step_length(None) > 10.0  # the raw gradient is ~ n * mean(x) = 600
    assert step_length(0.5) <= 0.5 + 1e-6


def test_minibatch_loss_is_on_the_full_data_scale(x):
    guide = AutoDelta(normal_mean_model)
    full = inference.svi(
        normal_mean_model, guide, x, steps=1, lr=1e-12, optimizer="sgd", init="guide", progress=False
    ).losses[0]
    fit = inference.svi(
        normal_mean_model,
        AutoDelta(normal_mean_model),
        x,
        steps=8,
        batch_size=25,
        lr=1e-12,
        optimizer="sgd",
        progress=False,
    )
    # One epoch of 8 batches of 25 covers every point once: the mean of the scaled batch losses is the
    # full-data loss exactly (the parameters do not move at lr=1e-12).
    assert fit.losses.mean() == pytest.approx(full, rel=1e-6)
    assert fit.losses.std() > 0  # the batches really differ


def test_minibatch_svi_recovers_the_posterior(x):
    mean, sd = exact_normal_mean(x)
    fit = inference.svi(
        normal_mean_model,
        AutoNormal(normal_mean_model),
        x,
        epochs=300,
        batch_size=50,
        lr=0.05,
        schedule="exponential",
        lr_min=1e-4,
        progress=False,
    )
    assert abs(fit.params["AutoNormal.locs.mu"].item() - mean) < 0.2 * sd
    assert len(fit.losses) == 300 * 4


def test_plate_name_is_checked(x):
    with pytest.raises(InvalidInputError, match="plate named 'rows'"):
        inference.svi(
            normal_mean_model,
            AutoNormal(normal_mean_model),
            x,
            steps=2,
            batch_size=10,
            subsample_plate="rows",
            progress=False,
        )


def test_early_stopping_stops_on_a_plateau(x):
    fit = inference.svi(
        normal_mean_model,
        AutoDelta(normal_mean_model),
        x,
        steps=5000,
        lr=0.1,
        eval_every=20,
        patience=3,
        progress=False,
    )
    assert fit.diagnostics["stopped_at"] is not None
    assert len(fit.losses) == fit.diagnostics["stopped_at"] < 5000


def test_early_stopping_on_heldout_data_restores_the_best(x):
    train, val = x[:150], x[150:]
    fit = inference.svi(
        normal_mean_model,
        AutoNormal(normal_mean_model),
        train,
        steps=3000,
        lr=0.05,
        validation_data=(val,),
        eval_every=25,
        patience=4,
        progress=False,
    )
    vals = fit.diagnostics["validation_losses"]
    assert vals and fit.diagnostics["stopped_at"] is not None
    best_step, best = min(vals, key=lambda sv: sv[1])
    assert fit.diagnostics["best_step"] == best_step
    # the held-out loss is on the training scale: about 150/50 times the held-out data's own loss
    own = -dist.Normal(fit.params["AutoNormal.locs.mu"], NOISE_SD).log_prob(val).sum().item()
    assert best == pytest.approx(150 / 50 * own, rel=0.05)


def test_same_seed_same_numbers(x):
    a = inference.svi(
        normal_mean_model, AutoNormal(normal_mean_model), x, steps=50, batch_size=20, seed=7, progress=False
    )
    b = inference.svi(
        normal_mean_model, AutoNormal(normal_mean_model), x, steps=50, batch_size=20, seed=7, progress=False
    )
    c = inference.svi(
        normal_mean_model, AutoNormal(normal_mean_model), x, steps=50, batch_size=20, seed=8, progress=False
    )
    assert np.array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)
    assert torch.equal(a.samples(10, seed=3)["mu"], b.samples(10, seed=3)["mu"])


def test_resume_reproduces_the_uninterrupted_run(x, tmp_path):
    kw = dict(steps=60, batch_size=30, lr=0.05, schedule="cosine", seed=3, progress=False)
    full = inference.svi(normal_mean_model, AutoNormal(normal_mean_model), x, **kw)
    ckpt = tmp_path / "run.pt"
    inference.svi(
        normal_mean_model,
        AutoNormal(normal_mean_model),
        x,
        checkpoint=ckpt,
        callback=lambda step, loss: step + 1 == 25,
        **kw,
    )
    resumed = inference.svi(normal_mean_model, AutoNormal(normal_mean_model), x, checkpoint=ckpt, resume=True, **kw)
    assert len(resumed.losses) == 60
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-12)
    for k in full.params:
        assert torch.equal(resumed.params[k], full.params[k])


def test_a_damaged_checkpoint_is_a_clear_error(x, tmp_path):
    ckpt = tmp_path / "run.pt"
    inference.svi(normal_mean_model, AutoNormal(normal_mean_model), x, steps=5, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        inference.svi(
            normal_mean_model, AutoNormal(normal_mean_model), x, steps=10, checkpoint=ckpt, resume=True, progress=False
        )


def test_a_checkpoint_of_another_model_is_refused(x, tmp_path):
    ckpt = tmp_path / "run.pt"
    inference.svi(normal_mean_model, AutoNormal(normal_mean_model), x, steps=5, checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointError, match="different model"):
        inference.svi(
            normal_mean_model, AutoDelta(normal_mean_model), x, steps=10, checkpoint=ckpt, resume=True, progress=False
        )


def test_fits_do_not_share_parameters(x):
    a = inference.svi(normal_mean_model, AutoDelta(normal_mean_model), x, steps=200, lr=0.1, progress=False)
    start = init_to_value(values={"mu": torch.tensor(-5.0)})
    b = inference.svi(
        normal_mean_model,
        AutoDelta(normal_mean_model, init_loc_fn=start),
        x,
        steps=1,
        lr=1e-9,
        optimizer="sgd",
        init="guide",
        progress=False,
    )
    assert abs(b.params["AutoDelta.mu"].item() + 5) < 1e-3  # started afresh, not from a's 3.0
    assert len(pyro.get_param_store()) == 0  # nothing leaked into the global store
    assert abs(a.samples(3)["mu"] - a.params["AutoDelta.mu"]).max() == 0


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "tracegraph", "jit-trace", "jit-meanfield"])
def test_every_elbo_name_trains(x, elbo):
    mean, sd = exact_normal_mean(x)
    fit = inference.svi(
        normal_mean_model,
        AutoNormal(normal_mean_model),
        x,
        steps=400,
        lr=0.1,
        elbo=elbo,
        schedule="exponential",
        progress=False,
    )
    assert abs(fit.params["AutoNormal.locs.mu"].item() - mean) < 0.5 * sd


def test_enumerated_mixture_trains_with_enum_elbo():
    g = torch.Generator().manual_seed(4)
    data = torch.cat([torch.randn(60, generator=g) - 4, torch.randn(40, generator=g) + 4])

    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=dist.constraints.simplex)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    for elbo in ("enum", "jit-enum"):
        fit = inference.svi(
            model, lambda x: None, data, steps=300, lr=0.1, elbo=elbo, max_plate_nesting=1, progress=False
        )
        assert torch.allclose(fit.params["locs"], torch.tensor([-4.0, 4.0]), atol=0.5)
        assert torch.allclose(fit.params["w"], torch.tensor([0.6, 0.4]), atol=0.05)


def test_importance_weights_of_the_exact_posterior_are_constant(x):
    # With q = p(mu | x), log p(x, mu) - log q(mu) = log p(x) for every draw (MATH.md 1.1, KL = 0).
    torch.set_default_dtype(torch.float64)
    x = x.double()
    mean, sd = exact_normal_mean(x)

    def exact_guide(x):
        pyro.sample("mu", dist.Normal(mean, sd))

    empty_store = {"params": {}, "constraints": {}}
    draws, lw = importance_weights(normal_mean_model, exact_guide, (x,), empty_store, "trace")(50, 0)
    assert draws["mu"].shape == (50,) and draws["mu"].std() > 0.5 * sd
    assert lw.std() < 1e-6 * abs(lw.mean())
    log_evidence = dist.MultivariateNormal(
        torch.zeros(len(x)), NOISE_SD**2 * torch.eye(len(x)) + PRIOR_SD**2 * torch.ones(len(x), len(x))
    ).log_prob(x)
    assert lw.mean() == pytest.approx(log_evidence.item(), rel=1e-9)


def test_bad_names_and_data_are_clear_errors(x):
    guide = AutoNormal(normal_mean_model)
    with pytest.raises(InvalidInputError, match="optimizer='adamw' is not one of"):
        inference.svi(normal_mean_model, guide, x, optimizer="adamw", progress=False)
    with pytest.raises(InvalidInputError, match="elbo='renyish' is not one of"):
        inference.svi(normal_mean_model, guide, x, elbo="renyish", progress=False)
    with pytest.raises(InvalidInputError, match="lr must be a number > 0"):
        inference.svi(normal_mean_model, guide, x, lr=-1.0, progress=False)
    bad = x.clone()
    bad[3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        inference.svi(normal_mean_model, guide, bad, progress=False)
    with pytest.raises(InvalidInputError, match="epochs needs batch_size"):
        inference.svi(normal_mean_model, guide, x, epochs=3, progress=False)


def test_divergence_stops_with_the_step_and_the_site(x):
    # Plain SGD at lr=1 on a loss of curvature n = 200 overshoots by a factor ~200 each step.
    with pytest.raises(NonFiniteError, match=r"training stopped at step \d+.*site\(s\) .*x \(model\)"):
        inference.svi(
            normal_mean_model, AutoDelta(normal_mean_model), x, steps=500, lr=1.0, optimizer="sgd", progress=False
        )


def test_point_mass_guides_have_no_importance_weights(x):
    # A Delta guide has no density to weigh draws by: k-hat must be unavailable, not a perfect 0.
    fit = inference.svi(normal_mean_model, AutoDelta(normal_mean_model), x, steps=5, progress=False)
    assert fit.importance is None
    table = inference.compare({"map": fit}, var_names=["mu"], num_samples=50)
    assert np.isnan(table["khat"]).all()
    for guide in (AutoNormal, AutoMultivariateNormal):  # the latter places Deltas of an auxiliary site
        assert (
            inference.svi(normal_mean_model, guide(normal_mean_model), x, steps=5, progress=False).importance
            is not None
        )


def test_svi_is_a_loop_over_the_explicit_state(x):
    # svi() is SVI.init then SVI.update per step: the same losses, and a state_dict continues a run exactly
    fit = inference.svi(normal_mean_model, AutoNormal(normal_mean_model), x, steps=60, seed=4, progress=False)
    run = inference.SVI(normal_mean_model, AutoNormal(normal_mean_model))
    with pyro.get_param_store().scope():
        state = run.init(x, steps=60, seed=4)
        state.tracker = EarlyStopping(None, 1e-4)
        losses = [run.update(state) for _ in range(30)]
        saved = state.state_dict()
        losses += [run.update(state) for _ in range(30)]
        assert losses == fit.losses.tolist() and state.step == 60
        state.load_state_dict(saved)
        assert [run.update(state) for _ in range(30)] == losses[30:]
        assert run.evaluate(state, x) == pytest.approx(float(np.mean(losses[-10:])), rel=0.05)
