"""The README's Python examples run as written (the distributed one needs torchrun and is covered by
tests/test_distributed.py instead)."""

import re
from pathlib import Path

import matplotlib
import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
LOCAL = [b for b in BLOCKS if "distributed.setup" not in b]


def test_examples_are_found():
    assert len(LOCAL) >= 2


@pytest.mark.parametrize("code", LOCAL, ids=[f"example{i}" for i in range(len(LOCAL))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # figures the example saves land here
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace, "the example defined nothing"
    if "fits" in namespace:
        # The own-model example: 500 points and 4 parameters, so the posterior is close to Gaussian
        # (Bernstein-von Mises) and both Gaussian approximations must sit well within half a NUTS sd.
        import inference

        table = inference.compare(namespace["fits"], reference="nuts")
        assert (table["error"].abs() < 0.5).all()
        assert (tmp_path / "losses.png").exists() and (tmp_path / "posteriors.png").exists()
