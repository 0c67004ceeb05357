"""Data-parallel EM and VAE training on torch.distributed: 2 local processes, gloo, CPU.

Starting processes is the expensive part (each imports torch and Pyro), so one spawned group does all the
distributed work (`_work`) and rank 0 saves what the tests compare against single-process runs here.
"""

import json
import math
import sys

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from scipy import stats

from inference import distributed
from zoo.data import digits, make_mixture
from zoo.gmm import GaussianMixture
from zoo.vae import VAE

NPROC = 2
BATCH = 32  # per process: a step sees NPROC x BATCH rows
EPOCHS = 2
VAE_ARGS = dict(latent_dim=4, hidden=(32,))
FIT_ARGS = dict(lr=3e-3, elbo="trace", progress=False)


def _mixture():
    mix = make_mixture(3000, 3, 3, seed=1)
    init = GaussianMixture(3, seed=0).initial_params(mix.X)
    settings = dict(n_components=3, init=init[1], weights_init=init[0], covariances_init=init[2], tol=0, max_iter=30)
    return mix.X, settings


def _normal_mean(y):
    # a model whose parameters are pyro.params, not an nn.Module that DistributedDataParallel could wrap
    mu = pyro.sample("mu", pdist.Normal(0.0, 10.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", pdist.Normal(mu, 1.0), obs=y)


def _normal_mean_guide(y):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=pdist.constraints.positive)
    pyro.sample("mu", pdist.Normal(loc, scale))


def _y():
    return torch.randn(400, generator=torch.Generator().manual_seed(3)) + 2.0


def _params(vae):
    return [p.detach().clone() for m in (vae.encoder_, vae.decoder_) for p in m.parameters()]


def _work(tmp):
    """Every rank runs this; rank 0 saves the results to tmp/results.pt."""
    import inference.checkpoint
    from zoo.cli import main

    if distributed.rank() != 0:  # only rank 0 may write anything

        def refuse(path, data):
            raise AssertionError(f"rank {distributed.rank()} wrote {path}")

        inference.checkpoint.atomic_write_bytes = refuse
    out = {}

    X, settings = _mixture()
    gmm = GaussianMixture(**settings, distributed=True).fit(distributed.shard(X))
    out["gmm"] = {k: getattr(gmm, k) for k in ("weights_", "means_", "covariances_")}
    out["gmm_trace"] = torch.as_tensor(gmm.log_likelihood_trace_)

    y = _y()
    fit = inference.svi(
        _normal_mean,
        _normal_mean_guide,
        distributed.shard(y),
        steps=500,
        lr=0.05,
        schedule="exponential",
        batch_size=50,
        data_size=len(y),
        seed=distributed.rank_seed(0),
        progress=False,
        distributed=True,
        grad_hook=distributed.average_gradients,
    )
    out["hook_params"] = distributed.gather_object({k: v.clone() for k, v in fit.params.items()})

    x, x_test, _, _ = digits()
    try:
        VAE(**VAE_ARGS).fit(distributed.shard(x), epochs=1, elbo="jit-trace", distributed=True)
        out["jit_refused"] = False
    except inference.InvalidInputError:
        out["jit_refused"] = True

    vae = VAE(**VAE_ARGS).fit(
        distributed.shard(x), epochs=EPOCHS, batch_size=BATCH, seed=0, **FIT_ARGS, distributed=True
    )
    out["vae_params"] = distributed.gather_object(_params(vae))
    out["vae_losses"] = torch.as_tensor(vae.losses_)
    out["vae_test_elbo"] = vae.elbo(x_test, num_samples=10, seed=0)

    # interrupted after one epoch, resumed from the checkpoint that rank 0 wrote
    ckpt = f"{tmp}/vae.pt"
    VAE(**VAE_ARGS).fit(
        distributed.shard(x), epochs=1, batch_size=BATCH, seed=0, checkpoint=ckpt, **FIT_ARGS, distributed=True
    )
    resumed = VAE(**VAE_ARGS).fit(
        distributed.shard(x),
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=0,
        checkpoint=ckpt,
        resume=True,
        **FIT_ARGS,
        distributed=True,
    )
    out["resumed_params"] = _params(resumed)
    out["resumed_steps"] = len(resumed.losses_)

    # the command line under a launcher (RANK/WORLD_SIZE are set): last, as it leaves the group
    code = main(
        [
            "fit",
            "vae",
            "--latent-dim",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--iwae-k",
            "2",
            "--patience",
            "1",
            "--out",
            f"{tmp}/cli",
            "--no-progress",
        ]
    )
    out["cli_code"] = code
    if distributed.rank() == 0:
        torch.save(out, f"{tmp}/results.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if sys.platform == "win32":
        pytest.skip("gloo process groups are not used on Windows here")
    tmp = tmp_path_factory.mktemp("distributed")
    distributed.spawn(_work, NPROC, str(tmp))
    return torch.load(tmp / "results.pt", weights_only=True), tmp


def test_distributed_em_equals_single_process_em(results):
    res, _ = results
    X, settings = _mixture()
    single = GaussianMixture(**settings).fit(X)
    # Same start and the same summed statistics: only the order of float64 additions differs.
    np.testing.assert_allclose(res["gmm_trace"].numpy(), single.log_likelihood_trace_, rtol=1e-12, atol=1e-12)
    for name, value in res["gmm"].items():
        torch.testing.assert_close(value, getattr(single, name), rtol=1e-9, atol=1e-12)


def test_shard_interleaves_rows_and_rank_seeds_differ():
    x = torch.arange(7)
    parts = [distributed.shard(x, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    assert [len(p) for p in parts] == [3, 2, 2]
    assert distributed.rank_seed(5, 0) == 5 and len({distributed.rank_seed(5, r) for r in range(4)}) == 4
    with pytest.raises(ValueError, match="cannot shard"):
        distributed.shard(x, 0, 8)


def test_fit_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        GaussianMixture(2, distributed=True).fit(torch.randn(20, 2))
    with pytest.raises(ValueError, match="process group"):
        VAE(latent_dim=2).fit(torch.rand(20, 4), epochs=1, distributed=True)


def test_jit_elbo_is_refused_in_distributed_training(results):
    assert results[0]["jit_refused"]


def test_parameters_are_identical_across_ranks(results):
    rank0, rank1 = results[0]["vae_params"]
    # DDP averages the gradients in the backward pass, so every rank takes the same Adam step. The ranks
    # saw different minibatches and noise: without the averaging their parameters would differ.
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))


def test_average_gradients_hook_keeps_pyro_params_identical_across_ranks(results):
    rank0, rank1 = results[0]["hook_params"]
    # Each rank drew its own minibatches and noise; only the averaged gradients keep them equal.
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # and the averaged gradient is the full-data one: the guide finds the conjugate posterior of mu
    y = _y()
    precision = 1 / 10.0**2 + len(y)
    mean, sd = float(y.sum()) / precision, precision**-0.5
    assert abs(rank0["loc"].item() - mean) < 0.5 * sd


def test_distributed_vae_matches_single_process_training_with_the_same_total_batch(results):
    res, _ = results
    x, x_test, _, _ = digits()
    steps = EPOCHS * ((len(x) // NPROC) // BATCH)  # the smaller shard sets it
    assert len(res["vae_losses"]) == steps
    # Reference: single-process runs with the total batch (NPROC x BATCH) for the same number of steps.
    # The averaged gradient of NPROC shards x BATCH rows is an unbiased estimate with the same variance, so
    # the distributed run is one more draw from the distribution of these runs' test ELBOs (seed-to-seed
    # variation). Check it lies in their 99.9% prediction interval, mean ± t(0.9995, K−1) s sqrt(1 + 1/K).
    singles = [_single(x, steps, seed) for seed in range(5)]
    elbos = np.array([v.elbo(x_test, num_samples=10, seed=0) for v in singles])
    k = len(elbos)
    half_width = stats.t.ppf(0.9995, k - 1) * elbos.std(ddof=1) * math.sqrt(1 + 1 / k)
    assert abs(res["vae_test_elbo"] - elbos.mean()) <= half_width
    assert res["vae_test_elbo"] > -40  # learned: an untrained VAE scores about -44 nats per image
    # The loss is on the full-data scale: step 0 (same initial networks as seed 0) estimates the same
    # N x per-image loss. A 64-row mean of per-image losses (sd about 5 nats around 44) varies by ~2%;
    # a loss scaled to one shard would be 50% off.
    assert res["vae_losses"][0].item() == pytest.approx(singles[0].losses_[0], rel=0.1)


def _single(x, steps, seed):
    vae = VAE(**VAE_ARGS)
    epochs = steps // (len(x) // (NPROC * BATCH))
    return vae.fit(x, epochs=epochs, batch_size=NPROC * BATCH, seed=seed, **FIT_ARGS)


def test_resumed_distributed_run_reproduces_the_uninterrupted_one(results):
    res, tmp = results
    assert res["resumed_steps"] == len(res["vae_losses"])
    # Every rank's minibatch order and noise are restored from rank 0's checkpoint: the same steps.
    for a, b in zip(res["resumed_params"], res["vae_params"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ckpt = torch.load(tmp / "vae.pt", weights_only=True)
    assert len(ckpt["ranks"]) == NPROC


def test_cli_under_a_launcher_trains_on_shards_and_rank0_writes(results):
    res, tmp = results
    assert res["cli_code"] == 0
    s = json.loads((tmp / "cli" / "summary.json").read_text())
    assert s["nproc"] == NPROC and s["n_train"] > 1000
    assert s["steps"] == (s["n_train"] // NPROC) // 64
    assert (tmp / "cli" / "model.pt").is_file() and (tmp / "cli" / "losses.png").is_file()
