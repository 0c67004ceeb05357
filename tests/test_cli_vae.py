"""`zoo fit vae | beta-vae` end to end with small settings."""

import json
import re

import numpy as np
import pytest

from zoo.cli import main
from zoo.vae import format_kl_split

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("reconstructions.png", "samples.png", "traversals.png", "kl_per_dim.png", "losses.png")


def test_fit_vae_on_digits_writes_summary_figures_and_resumes(tmp_path, capsys):
    out = tmp_path / "vae"
    args = [
        "fit",
        "vae",
        "--latent-dim",
        "4",
        "--batch-size",
        "64",
        "--iwae-k",
        "20",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args + ["--epochs", "2"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 2 * (s["n_train"] // 64)
    assert s["test_iwae"] >= s["test_elbo"] - 0.1  # IWAE(k) bounds log p(x) at least as tightly
    split = s["kl_split"]
    assert split["mutual_info"] + split["total_correlation"] + split["dimwise_kl"] == pytest.approx(
        split["kl"], abs=1e-3
    )
    assert s["test_elbo"] == pytest.approx(s["test_reconstruction"] - s["test_kl"], abs=1e-4)
    assert "mig" not in s  # digits have no known generating factors
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert "test ELBO" in printed
    assert_kl_line_adds_up(printed, split)
    # --resume continues the same run to 4 epochs
    assert main(args + ["--epochs", "4", "--resume"]) == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["steps"] == 2 * s["steps"]


def test_fit_beta_vae_on_shapes_reports_disentanglement(tmp_path):
    out = tmp_path / "bvae"
    assert (
        main(
            [
                "fit",
                "beta-vae",
                "--n",
                "600",
                "--size",
                "16",
                "--epochs",
                "1",
                "--latent-dim",
                "3",
                "--iwae-k",
                "5",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["beta"] == 4.0 and s["data"] == "shapes"
    assert 0 <= s["mig"] <= 1 and 0 <= s["factorvae_score"] <= 1
    assert set(s["mig_per_factor"]) == {"shape", "scale", "orientation", "x", "y"}
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        # checked by the parser (argparse type= and choices=)
        (["--beta", "0"], "argument --beta: must be a number > 0, got '0'"),
        (["--lr", "nan"], "argument --lr: must be a number > 0, got 'nan'"),
        (["--anneal-epochs", "-1"], "argument --anneal-epochs: must be a number >= 0"),
        (["--latent-dim", "0"], "argument --latent-dim"),
        (["--nproc", "0"], "argument --nproc"),
        (["--likelihood", "poisson"], "argument --likelihood"),
        (["--device", "gpu7"], "argument --device: 'gpu7' is not a device name"),
        (["--device", "cuda:7"], "argument --device"),
        # checked by the job
        (["--data", "cifar"], "--data must be 'digits', 'shapes' or 'mnist"),
        (["--data", "mnist", "/nonexistent/images.idx"], "does not exist"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(tmp_path, capsys, extra, message):
    import torch

    if extra[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code = main(["fit", "vae", "--epochs", "1", "--out", str(tmp_path), "--no-progress"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("zoo: error:") and message in err and err.count("\n") == 1, err


def test_fit_on_user_mnist_files(tmp_path):
    import struct

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(140, 12, 12), dtype=np.uint8)
    raw = bytes([0, 0, 8, 3]) + b"".join(struct.pack(">I", d) for d in images.shape) + images.tobytes()
    (tmp_path / "images.idx").write_bytes(raw)
    out = tmp_path / "m"
    assert (
        main(
            [
                "fit",
                "vae",
                "--data",
                "mnist",
                str(tmp_path / "images.idx"),
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--latent-dim",
                "2",
                "--iwae-k",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["n_test"] == 20 and np.isfinite(s["test_elbo"])


KL_LINE = re.compile(r"KL estimate (\S+) = I\(x;z\) (\S+) \+ TC (\S+) \+ dim-wise (\S+) \(exact KL (\S+)\)")


def assert_kl_line_adds_up(text, split):
    """The printed KL split: the parts add up to the total printed beside them (the estimate), and the
    closed-form KL is printed apart, as itself."""
    m = KL_LINE.search(text)
    assert m, text
    total, mi, tc, dw, exact = (float(v) for v in m.groups())
    assert mi + tc + dw == pytest.approx(total, abs=1e-9)
    assert total == pytest.approx(split["kl"], abs=2e-3)
    assert exact == pytest.approx(split["kl_exact"], abs=1e-3)


def test_kl_split_line_puts_the_exact_kl_apart_from_the_parts_it_does_not_equal():
    # the numbers of the issue: an exact KL of 2.790 whose estimator's parts sum to 2.974
    split = {"kl": 2.9741, "mutual_info": 2.6144, "total_correlation": 0.2897, "dimwise_kl": 0.0700, "kl_exact": 2.7904}
    line = format_kl_split(split)
    assert line == "KL estimate 2.974 = I(x;z) 2.614 + TC 0.290 + dim-wise 0.070 (exact KL 2.790)"
    assert_kl_line_adds_up(line, split)
    # rounding each part alone could leave the sum a digit off the rounded total: the printed total is
    # the sum of the printed parts
    odd = {"kl": 0.0015, "mutual_info": 0.0005, "total_correlation": 0.0005, "dimwise_kl": 0.0005, "kl_exact": 0.0}
    assert_kl_line_adds_up(format_kl_split(odd), odd)
