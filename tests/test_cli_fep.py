"""`zoo simulate fep` end to end with short runs."""

import numpy as np
import pandas as pd
import pytest

from zoo import fep
from zoo.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_simulate_fep_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "fep"
    code = main(
        [
            "simulate",
            "fep",
            "--t-end",
            "30",
            "--action-onset",
            "25",
            "--record-every",
            "10",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mu -> 12" in printed and "trajectory.csv" in printed
    table = pd.read_csv(out / "trajectory.csv")
    assert {"t", "position", "T", "phi", "phi'", "mu", "mu'", "mu''", "a", "F", "F_laplace"} <= set(table.columns)
    assert len(table) == 601 and table["t"].iloc[-1] == pytest.approx(30.0)
    # the CSV holds exactly what the library returns for the same settings
    same = fep.simulate(t_end=30.0, action_onset=25.0, record_every=10, progress=False)
    np.testing.assert_allclose(table[same.columns].to_numpy(), same.to_numpy(), rtol=1e-12)
    assert (out / "trajectory.png").read_bytes()[:8] == PNG
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_simulate_fep_options_and_sweep(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(
        [
            "simulate",
            "fep",
            "--t-end",
            "20",
            "--action-onset",
            "10",
            "--record-every",
            "50",
            "--sigma-z",
            "0.2",
            "--sigma-w",
            "0.05",
            "--kappa-a",
            "0.02",
            "--T-desire",
            "5",
            "--x0",
            "1.5",
            "--noise",
            "0.1",
            "--seed",
            "7",
            "--sweep",
            "0.05,0.5",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "trajectory.csv")
    same = fep.simulate(
        t_end=20.0,
        action_onset=10.0,
        record_every=50,
        sigma_z=0.2,
        sigma_w=0.05,
        kappa_a=0.02,
        T_desire=5.0,
        x0=1.5,
        noise=0.1,
        seed=7,
        progress=False,
    )
    np.testing.assert_allclose(table["mu"], same["mu"], rtol=1e-12)
    grid = pd.read_csv(out / "sweep.csv")
    assert set(zip(grid["sigma_z"], grid["sigma_w"])) == {(0.05, 0.05), (0.05, 0.5), (0.5, 0.05), (0.5, 0.5)}
    assert (out / "sweep.png").read_bytes()[:8] == PNG
    assert "4 agents" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,match",
    [
        # rejected while parsing, by the flags' argument types
        (["--sigma-z", "0"], "argument --sigma-z: must be a number > 0, got '0'"),
        (["--dt", "-1"], "argument --dt: must be a number > 0, got '-1'"),
        (["--kappa-a", "-0.1"], "argument --kappa-a: must be a number >= 0"),
        (["--noise", "nan"], "argument --noise: must be a number >= 0, got 'nan'"),
        (["--order", "0"], "argument --order: must be >= 1"),
        (["--record-every", "x"], "argument --record-every: 'x' is not an integer"),
        (["--sweep", "a,b"], "argument --sweep: must be comma-separated numbers > 0, got 'a,b'"),
        (["--sweep", "0.1,-1"], "argument --sweep: must be comma-separated numbers > 0"),
        # rejected by the library: settings that only fail together, and a run that diverges
        (["--action-onset", "50", "--t-end", "10"], "action_onset=50.0 is beyond t_end=10.0"),
        (["--T-desire", "inf"], "T_desire must be finite"),
        (["--kappa-mu", "80", "--t-end", "5", "--action-onset", "1"], "diverged at step"),
    ],
)
def test_simulate_fep_bad_input_exits_2_with_one_line(tmp_path, capsys, args, match):
    # later flags win in argparse, so each case's own --t-end / --action-onset override these
    code = main(
        ["simulate", "fep", "--t-end", "1", "--action-onset", "0.5", *args, "--out", str(tmp_path), "--no-progress"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and match in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # nothing written
