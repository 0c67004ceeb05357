"""Data-parallel training on ``torch.distributed``: process groups, shards, seeds and reductions.

Every process (a *rank*, 0 .. world_size − 1) holds one shard of the data and a full copy of the model.
Gradients are averaged across ranks after each backward pass (:func:`average_gradients`, the
``grad_hook`` of :func:`inference.svi`), so each optimizer step uses the minibatches of all ranks together;
sums over the data (EM's sufficient statistics) are all-reduced. Rank 0 alone writes files.

    device = distributed.setup()                 # under torchrun: reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    x_mine = distributed.shard(x)                # rows rank, rank + W, rank + 2W, ...
    fit = inference.svi(model, guide, x_mine, batch_size=B, **distributed.svi_settings(len(x_mine), B, epochs))
    distributed.teardown()

or, without torchrun, ``distributed.spawn(fn, nproc, *args)`` runs ``fn(*args)`` in ``nproc`` local
processes that have joined one group. CPU processes talk over gloo, GPUs over NCCL (one GPU per process,
``cuda:LOCAL_RANK``). Every helper is a no-op in a single process without a process group, so the same
code runs with or without it.
"""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist

from .errors import InferenceError, InvalidInputError

# ---- the process group --------------------------------------------------------------------------------


def setup(rank=None, world_size=None, *, device="cpu", backend=None, master_addr=None, master_port=None):
    """Join the default process group and return the ``torch.device`` this process should compute on.

    Without arguments, reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); ``rank``/``world_size`` (and an address and port, default 127.0.0.1 and 29500) set them
    explicitly. ``device``: "cpu" (default; backend gloo) or "cuda" (backend nccl, one GPU per process:
    cuda:LOCAL_RANK). A group that already exists is reused.
    """
    env = os.environ
    rank = int(env.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(env.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidInputError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("device='cuda' but no CUDA GPU is available here; use device='cpu'")
        local = int(env.get("LOCAL_RANK", rank)) if device.index is None else device.index
        if local >= torch.cuda.device_count():
            raise InvalidInputError(
                f"process {rank} wants GPU cuda:{local}, but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # NCCL and the object collectives use the current GPU
    elif device.type != "cpu":
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    if not dist.is_initialized():
        env["MASTER_ADDR"] = master_addr or env.get("MASTER_ADDR", "127.0.0.1")
        env["MASTER_PORT"] = str(master_port or env.get("MASTER_PORT", "29500"))
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None
        )
    return device


def teardown():
    """Leave the process group (after a barrier, so no rank exits while another still talks to it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launched():
    """True when this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed():
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer():
    """Only rank 0 writes checkpoints, figures and summaries."""
    return rank() == 0


def require_group(what):
    """Raise a clear error when ``what`` asks for distributed work outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidInputError(
            f"{what} needs an initialised torch.distributed process group: launch "
            f"with torchrun and call inference.distributed.setup() first"
        )


def free_port():
    """A TCP port that is free on this machine now (for a local group's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, nproc, *args, device="cpu", port=None):
    """Run ``fn(*args)`` in ``nproc`` new local processes that form one process group (ranks 0..nproc−1).

    On CPU each process uses cpu_count // nproc threads, so that the processes do not oversubscribe the
    cores. Raises when a process fails (the others are stopped); returns nothing.
    """
    import torch.multiprocessing as mp

    port = port or free_port()
    mp.spawn(_worker, args=(nproc, str(device), port, fn, args), nprocs=nproc, join=True)


def _worker(rank_, nproc, device, port, fn, args):
    if torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    os.environ.update(
        RANK=str(rank_), LOCAL_RANK=str(rank_), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    setup(rank_, nproc, device=device)
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- data and seeds -----------------------------------------------------------------------------------


def shard(x, rank_=None, world_size_=None):
    """This rank's rows of ``x`` (a tensor or array with rows on dim 0): rows rank, rank + W, ... (a view).

    Interleaved rows spread data sorted by class or time evenly; shard sizes differ by at most one.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    if not 0 <= r < w:
        raise InvalidInputError(f"need 0 <= rank < world_size, got rank={r}, world_size={w}")
    if len(x) < w:
        raise InvalidInputError(f"cannot shard {len(x)} rows over {w} processes: each needs at least one")
    return x[r::w]


def rank_seed(seed, rank_=None):
    """An independent seed for each rank: ``seed`` itself on rank 0 (so one process reproduces the
    non-distributed run), a hash of (seed, rank) elsewhere."""
    r = rank() if rank_ is None else rank_
    if r == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0])


def svi_settings(n, batch_size, epochs, seed=0, *, elbo=None, what="svi_settings"):
    """The settings of :func:`inference.svi` for this rank of a data-parallel fit on its own shard of the data.

    Every step is a collective (the step's loss and gradients are averaged over the ranks), so every rank
    takes the same number of steps: the smallest shard sets the steps per epoch,
    ``n_min // min(batch_size, n_min)``. Each minibatch term is scaled to the total N = Σ n over the ranks,
    each rank draws its own minibatches and noise (:func:`rank_seed`), and :func:`average_gradients`
    averages the gradients before every optimizer step, so all ranks take the same step. A distributed
    step runs eagerly (:func:`inference.svi` does not compile it), so an ELBO name that asks for the
    compiled step ("jit-...") is refused rather than run otherwise.

    Args:
        n: rows of this rank's shard.
        batch_size: rows per step on this rank (a step sees world_size x batch_size rows).
        epochs: passes over the smallest shard.
        seed: the run's seed, the same on every rank.
        elbo: the ELBO's name, or None.
        what: names the caller in the errors.

    Returns:
        dict of keyword arguments of :func:`inference.svi`: ``steps``, ``eval_every`` (one epoch, the same
        steps on every rank, as held-out losses are averaged over them), ``data_size`` (N), ``seed`` (this
        rank's), ``grad_hook`` and ``distributed=True``.
    """
    require_group(what)
    if elbo is not None and elbo.startswith("jit-"):
        raise InvalidInputError(
            f"{what}: elbo={elbo!r} asks for the compiled step, but a distributed step runs "
            f"eagerly (its gradients are averaged over the processes); use "
            f"elbo={elbo.removeprefix('jit-')!r}"
        )
    n_min = total(int(n), op="min")
    per_epoch = n_min // min(batch_size, n_min)
    return {
        "steps": epochs * per_epoch,
        "eval_every": per_epoch,
        "data_size": total(int(n)),
        "seed": rank_seed(seed),
        "grad_hook": average_gradients,
        "distributed": True,
    }


# ---- reductions ---------------------------------------------------------------------------------------


def all_reduce_sum(tensor):
    """Sum ``tensor`` over all ranks, in place, and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean(value, device=None):
    """The mean of a float over all ranks (the value itself in a single process)."""
    if not is_distributed():
        return value
    return total(float(value), device) / dist.get_world_size()


def total(value, device=None, op="sum"):
    """Sum (``op="sum"``), min or max of a number over all ranks."""
    if not is_distributed():
        return value
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    t = torch.tensor([value], dtype=torch.float64, device=device or _comm_device())
    dist.all_reduce(t, op=ops[op])
    return type(value)(t.item())


def average_gradients(params):
    """Average the ``.grad`` of ``params`` over ranks with one all-reduce of a flat buffer, in place: the
    ``grad_hook`` of :func:`inference.svi` in a distributed fit (see :func:`svi_settings`).

    Args:
        params: the parameters; every rank must have gradients for the same ones (a parameter without a
            gradient, such as an unused one, is left out on every rank alike).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_object(obj):
    """A list of every rank's ``obj`` (picklable; tensors on the CPU), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (picklable; tensors on the CPU)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn):
    """Compute ``fn()`` on rank 0 and return its result on every rank (tensors must be on the CPU);
    an error of the project (InferenceError) raised on rank 0 is raised on every rank, so no rank waits
    forever for the others."""
    if not is_distributed():
        return fn()
    result = error = None
    if rank() == 0:
        try:
            result = fn()
        except InferenceError as e:
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def _comm_device():
    """Tensors handed to NCCL must live on the GPU; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
