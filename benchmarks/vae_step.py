"""Cost of the Pyro path: a VAE step through our model/guide and `inference.svi` vs plain PyTorch.

Both train the same networks (zoo.vae's MLP encoder/decoder, the same initial weights) on the 8x8 digits
with the same Adam (the fused kernel ``inference.optim`` builds; a second plain row uses
``torch.optim.Adam``'s defaults, for reference), batch 128, the Bernoulli likelihood and the loss on the
full-data scale (x N/B). The plain loop computes the KL in closed form; the Pyro runs use each ELBO and
step named on the command line ("meanfield" estimators also use the closed-form KL; "/eager" is Pyro's own
step, "/inductor" the fused kernels, no suffix the default compiled step). Prints ms/step (median over
steps after the first epoch, which holds the step's capture and compilation), the ratio to plain PyTorch,
and the test ELBO (nats per image, 10 samples) each reaches after the same number of epochs. The paths run
in alternating rounds; the ratio is the median over rounds of each round's ratio, which cancels the drift
of a shared machine's speed.

    OMP_NUM_THREADS=1 python benchmarks/vae_step.py [--epochs 30] [--paths meanfield,meanfield/eager,...]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import inference
from inference.optim import make_optimizer
from zoo.data import digits
from zoo.vae import VAE


def plain_pytorch(vae, x, epochs, batch_size, lr, seed, textbook_adam=False):
    """The textbook loop: -ELBO = BCE(x, decoder(z)) + KL(q || p) in closed form, x N/B.

    The optimizer is the one ``inference.svi`` builds (Adam, fused kernel), so the ratio measures the Pyro
    path alone; ``textbook_adam`` uses ``torch.optim.Adam``'s defaults instead, for reference.
    """
    enc, dec = vae.encoder_, vae.decoder_
    params = list(enc.parameters()) + list(dec.net.parameters())
    opt = torch.optim.Adam(params, lr=lr) if textbook_adam else make_optimizer("adam", params, lr=lr)
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(n // batch_size):
            t0 = time.perf_counter()
            xb = x[perm[i * batch_size : (i + 1) * batch_size]]
            loc, scale = enc(xb)
            z = loc + scale * torch.randn_like(loc)
            rec = F.binary_cross_entropy_with_logits(dec(z), xb, reduction="sum")
            kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum()
            loss = (rec + kl) * (n / batch_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    return np.array(times)


def pyro_svi(vae, x, epochs, batch_size, lr, seed, path):
    elbo, _, compile = path.partition("/")
    compile = {"": "auto", "eager": False}.get(compile, compile)
    stamps = []
    inference.svi(
        vae.model,
        vae.guide,
        x,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        elbo=elbo,
        compile=compile,
        schedule=None,
        seed=seed,
        progress=False,  # constant, as the plain loop
        callback=lambda step, loss: stamps.append(time.perf_counter()),
    )
    return np.diff(np.array(stamps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--latent-dim", type=int, default=10)
    ap.add_argument(
        "--paths",
        default="meanfield,meanfield/eager,meanfield/inductor,trace",
        help="ELBO[/compile] per Pyro path: compile auto (default), torchscript, inductor or eager",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of all paths (default: 5)")
    args = ap.parse_args()

    x_train, x_test, _, _ = digits()
    per_epoch = x_train.shape[0] // args.batch_size
    skip = per_epoch  # the first epoch holds compilation and warm-up

    def fresh():
        torch.manual_seed(args.seed)
        return VAE(latent_dim=args.latent_dim).build(x_train.shape[1:])

    # The machine is shared and its speed drifts by tens of percent over a minute, so the paths are run
    # in alternating rounds and each round's ratio is taken against the plain loop of the same round.
    elbos = args.paths.split(",")
    names = ["plain PyTorch (analytic KL)", "plain PyTorch, torch.optim.Adam defaults"] + [
        f"pyro + inference.svi, {e}" for e in elbos
    ]
    ms = {name: [] for name in names}
    test_elbo = {}
    for _ in range(args.rounds):
        for name, textbook in zip(names[:2], (False, True)):
            vae = fresh()
            t = plain_pytorch(vae, x_train, args.epochs, args.batch_size, args.lr, args.seed, textbook)
            ms[name].append(np.median(t[skip:]) * 1e3)
            test_elbo[name] = vae.elbo(x_test, num_samples=10)
        for name, elbo in zip(names[2:], elbos):
            vae = fresh()
            t = pyro_svi(vae, x_train, args.epochs, args.batch_size, args.lr, args.seed, elbo)
            ms[name].append(np.median(t[skip:]) * 1e3)
            test_elbo[name] = vae.elbo(x_test, num_samples=10)
    base = np.array(ms[names[0]])
    rows = [(name, np.median(ms[name]), np.median(np.array(ms[name]) / base), test_elbo[name]) for name in names]

    print(
        f"digits: {x_train.shape[0]} train / {x_test.shape[0]} test, batch {args.batch_size}, "
        f"{args.epochs} epochs ({args.epochs * per_epoch} steps), torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':45s} {'ms/step':>8s} {'ratio':>6s} {'test ELBO':>10s}   (medians over {args.rounds} rounds)")
    for name, step_ms, ratio, elbo_value in rows:
        print(f"{name:45s} {step_ms:8.3f} {ratio:6.2f} {elbo_value:10.3f}")


if __name__ == "__main__":
    main()
