"""A real training process killed mid-run loses nothing: its last checkpoint is whole, and resuming from
it reaches the same numbers as a run that was never interrupted."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from inference.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent("""
    import sys, time
    import pyro, pyro.distributions as dist, torch
    from pyro.infer.autoguide import AutoNormal
    import inference

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    x = torch.randn(300, generator=torch.Generator().manual_seed(0)) + 2.0
    slow = (lambda step, loss: time.sleep(0.02)) if sys.argv[2] == "slow" else None
    fit = inference.svi(model, AutoNormal(model), x, steps=200, batch_size=50, lr=0.05, seed=11,
                        schedule="cosine", checkpoint=sys.argv[1], checkpoint_every=7,
                        resume=True, callback=slow, progress=False)
    torch.save({"losses": torch.tensor(fit.losses),
                "loc": fit.params["AutoNormal.locs.mu"]}, sys.argv[1] + ".result")
""")


def run(script, ckpt, mode):
    return subprocess.Popen([sys.executable, str(script), str(ckpt), mode])


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    reference = tmp_path / "reference.pt"
    assert run(script, reference, "fast").wait(timeout=120) == 0
    expected = torch.load(str(reference) + ".result", weights_only=True)

    ckpt = tmp_path / "interrupted.pt"
    proc = run(script, ckpt, "slow")
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until a few checkpoints have been written
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 35:
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    killed_at = load_checkpoint(ckpt)["step"]  # the file is whole (atomic writes), not half-written
    assert 35 <= killed_at < 200

    assert run(script, ckpt, "fast").wait(timeout=120) == 0
    resumed = torch.load(str(ckpt) + ".result", weights_only=True)
    np.testing.assert_array_equal(resumed["losses"].numpy(), expected["losses"].numpy())
    assert torch.equal(resumed["loc"], expected["loc"])
