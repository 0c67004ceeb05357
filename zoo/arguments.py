"""The argument types of the `zoo` command line: each turns one string into a checked value, or raises
``argparse.ArgumentTypeError``, which argparse prints as ``zoo: error: argument --NAME: <message>`` (exit 2)."""

import argparse
import math

import torch

from inference.errors import InferenceError


def positive_int(text):
    """An integer >= 1."""
    return _integer(text, 1)


def nonnegative_int(text):
    """An integer >= 0."""
    return _integer(text, 0)


def positive_float(text):
    """A finite number > 0."""
    return _number(text, lambda value: value > 0, "a number > 0")


def nonnegative_float(text):
    """A finite number >= 0."""
    return _number(text, lambda value: value >= 0, "a number >= 0")


def comma_list(valid=None):
    """A comma-separated list of names: each among ``valid`` (a collection), or passed to ``valid`` (a
    function that returns the names or raises the project's error); None takes any names."""

    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        if callable(valid):
            try:
                return valid(names)
            except InferenceError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        unknown = [n for n in names if valid is not None and n not in valid]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"{unknown or text!r}: choose from {', '.join(valid or ['names'])}")
        return names

    return parse


def positive_floats(text):
    """Comma-separated finite numbers > 0, e.g. ``0.01,0.1,1``."""
    try:
        values = [positive_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers > 0, got {text!r}")
    return values


def device(text):
    """A torch.device that exists here: cpu, cuda, cuda:N, or auto (cuda when a GPU is available, else cpu)."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        value = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name (cpu, cuda, cuda:N, auto)") from None
    if value.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available here; use --device cpu")
    return value


def _integer(text, least):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _number(text, ok, what):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value
