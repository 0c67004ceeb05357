"""Closed-form EM: zoo.GaussianMixture against scikit-learn's GaussianMixture, per iteration.

N = 100 000 points, K = 10 components, D = 10 dimensions, full covariances, exactly 20 EM iterations
from the same start (weights, means, precisions) on the same data, 2 threads. Prints ms/iteration of
both, the speed-up (target >= 5x), the final log-likelihood's relative difference in float64 (target
<= 1e-6), and how our time per iteration grows with N and with K.

    OMP_NUM_THREADS=2 python benchmarks/gmm_em.py
"""

import time
import warnings

import numpy as np
import torch
from sklearn.mixture import GaussianMixture as SklearnMixture

from zoo.data import make_mixture
from zoo.gmm import GaussianMixture

ITERATIONS = 20


def start(X, K, seed=0):
    """One shared start: k-means++ seeds and their clusters (our initialisation), as numpy float64."""
    w, m, c = GaussianMixture(K, seed=seed).initial_params(X)
    return w.numpy(), m.numpy(), c.numpy()


def ours(X, K, w, m, c, dtype):
    gmm = GaussianMixture(K, init=m, weights_init=w, covariances_init=c, tol=0, max_iter=ITERATIONS, dtype=dtype)
    Xt = torch.as_tensor(X, dtype=dtype)
    gmm.fit(Xt)  # warm-up (allocations, thread pool)
    t0 = time.perf_counter()
    gmm.fit(Xt)
    seconds = time.perf_counter() - t0
    assert gmm.n_iter_ == ITERATIONS
    # ITERATIONS M-steps and ITERATIONS + 1 E-steps, like scikit-learn (its last E-step labels the data)
    return seconds / ITERATIONS * 1e3, gmm


def sklearn(X, K, w, m, c):
    precisions = np.linalg.inv(c)
    sk = SklearnMixture(
        K,
        covariance_type="full",
        weights_init=w,
        means_init=m,
        precisions_init=precisions,
        max_iter=ITERATIONS,
        tol=0,
        reg_covar=1e-6,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": tol=0 asks for all iterations
        t0 = time.perf_counter()
        sk.fit(X)
        seconds = time.perf_counter() - t0
    assert sk.n_iter_ == ITERATIONS, sk.n_iter_
    return seconds / ITERATIONS * 1e3, sk


def main():
    torch.set_num_threads(2)
    N, K, D = 100_000, 10, 10
    X = make_mixture(N, K, D, separation=2.0, seed=0).X.numpy()
    w, m, c = start(X, K)
    sk_ms, sk = sklearn(X, K, w, m, c)
    print(
        f"N={N} K={K} D={D} full covariance, {ITERATIONS} iterations from the same start, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"scikit-learn (float64)     {sk_ms:8.2f} ms/iteration")
    for dtype in (torch.float64, torch.float32):
        ms, gmm = ours(X, K, w, m, c, dtype)
        ll_ours, ll_sk = gmm.score(torch.as_tensor(X, dtype=torch.float64).to(dtype)), sk.score(X)
        print(
            f"zoo ({str(dtype).split('.')[1]:7s})            {ms:8.2f} ms/iteration   speed-up {sk_ms / ms:5.1f}x   "
            f"final log-lik {ll_ours:.10f} vs sklearn {ll_sk:.10f}, relative difference "
            f"{abs(ll_ours - ll_sk) / abs(ll_sk):.2e}"
        )

    print("\nscaling of zoo (float64, ms/iteration; sklearn for comparison)")
    for n in (10_000, 100_000, 1_000_000):
        Xn = make_mixture(n, K, D, separation=2.0, seed=1).X.numpy()
        w, m, c = start(Xn, K)
        ms, _ = ours(Xn, K, w, m, c, torch.float64)
        sk_ms, _ = sklearn(Xn, K, w, m, c) if n <= 100_000 else (float("nan"), None)
        print(f"  N={n:>9,d} K={K:2d}: {ms:9.2f} ms   ({ms / n * 1e6:6.1f} ns/point)   sklearn {sk_ms:9.2f} ms")
    Xk = make_mixture(100_000, 40, D, separation=2.0, seed=2).X.numpy()
    for k in (5, 10, 20, 40):
        w, m, c = start(Xk, k)
        ms, _ = ours(Xk, k, w, m, c, torch.float64)
        print(f"  N=  100,000 K={k:2d}: {ms:9.2f} ms   ({ms / k:6.2f} ms per component)")


if __name__ == "__main__":
    main()
