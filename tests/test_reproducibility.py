"""The same seed gives the same numbers, for every method (on CPU); a different seed gives others."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import inference
import zoo
from zoo import data, fep


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, sigma), obs=x)


X = torch.randn(40, generator=torch.Generator().manual_seed(0)) * 2 + 1


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_laplace():
    a, b, c = (inference.laplace(model, X, seed=s).samples(50, seed=s) for s in (1, 1, 2))
    assert same(a, b) and not same(a, c)


def test_nuts():
    a, b, c = (inference.nuts(model, X, num_samples=30, warmup_steps=30, seed=s, progress=False) for s in (1, 1, 2))
    assert same(a.chains, b.chains) and not same(a.chains, c.chains)


def test_gaussian_mixture():
    X2 = data.make_mixture(150, 3, 2, seed=0).X
    # n_init=2 from seed s runs the starts of seeds s and s + 1: 4 and 9 share none
    a, b, c = (zoo.GaussianMixture(3, n_init=2, init="random", seed=s).fit(X2) for s in (4, 4, 9))
    assert torch.equal(a.means_, b.means_) and np.array_equal(a.log_likelihood_trace_, b.log_likelihood_trace_)
    assert not torch.equal(a.means_, c.means_)


def test_vae():
    x = data.digits().x_train[:256]
    fits = [
        zoo.VAE(latent_dim=2, hidden=(16,)).fit(x, epochs=2, batch_size=64, seed=s, progress=False) for s in (3, 3, 4)
    ]
    a, b, c = (f.losses_ for f in fits)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_noisy_fep_simulation():
    a, b, c = (fep.simulate(noise=0.1, seed=s, t_end=2.0, action_onset=1.0, laplace=False) for s in (7, 7, 8))
    assert a.equals(b) and not a.equals(c)
