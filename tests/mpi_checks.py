"""Checks of the MPI helpers, run under a real mpirun by tests/test_mpi.py.

Each check asserts on every rank and prints ``OK <name>`` on rank 0 when all ranks agree.
"""

import sys

import numpy as np
import torch
from mpi4py import MPI

from spinppo.utils.mpi_pytorch import flatten_parameters, mpi_avg_grads, setup_pytorch_for_mpi, sync_params
from spinppo.utils.mpi_tools import allgather, mpi_statistics_scalar, num_procs, proc_id


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        self.unused = torch.nn.Parameter(torch.ones(4))  # never gets a gradient
        self.rank1_only = torch.nn.Parameter(torch.ones(2))  # gets a gradient on rank 1 alone
        self.register_buffer("count", torch.tensor(proc_id(), dtype=torch.int64))


def check_avg_grads():
    torch.manual_seed(0)
    net = Net()
    torch.manual_seed(100 + proc_id())  # different data on every rank
    x = torch.randn(7, 5)
    loss = net.body(x).pow(2).sum()
    if proc_id() == 1:
        loss = loss + (net.rank1_only * 3.0).sum()
    loss.backward()
    mine = {n: (None if p.grad is None else p.grad.clone().numpy()) for n, p in net.named_parameters()}
    everyone = allgather(mine)
    mpi_avg_grads(net)
    for name, p in net.named_parameters():
        grads = [g[name] for g in everyone]
        if all(g is None for g in grads):
            assert p.grad is None, f"{name}: no rank had a gradient, yet one appeared"
            continue
        expected = np.mean([np.zeros(p.shape, np.float32) if g is None else g for g in grads], axis=0)
        assert p.grad is not None, f"{name}: gradient missing on rank {proc_id()}"
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert net.unused.grad is None
    if num_procs() > 1:
        np.testing.assert_allclose(net.rank1_only.grad.numpy(), np.full(2, 3.0 / num_procs()), rtol=1e-6)
    # Every rank holds the very same averaged gradient, bit for bit.
    flat = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None]).numpy().tobytes()
    assert len(set(allgather(flat))) == 1, "ranks disagree on the averaged gradient"


def _rank_loss(net, step):
    torch.manual_seed(1000 * step + proc_id())  # different data on every rank
    loss = net.body(torch.randn(7, 5)).pow(2).sum()
    if proc_id() == 1:
        loss = loss + (net.rank1_only * 3.0).sum()
    return loss


def check_flat_params():
    """Adam over flatten_parameters' one tensor == per-tensor Adam on the rank-averaged gradient."""
    torch.manual_seed(0)
    net, reference = Net(), Net()
    reference.load_state_dict(net.state_dict())
    flat = flatten_parameters(net)
    assert flat.numel() == sum(p.numel() for p in reference.parameters())
    assert not any(p is flat for p in net.parameters()), "the flat Parameter must not join the module's"
    assert list(net.state_dict()) == list(reference.state_dict())
    opt = torch.optim.Adam([flat], lr=1e-2, fused=True)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for step in range(4):
        flat.grad.zero_()  # the contract: zero the flat gradient in place, never set it to None
        _rank_loss(net, step).backward()
        mpi_avg_grads(net)  # writes the mean back in place: it is now in flat.grad
        # Reference: every rank's gradient gathered, averaged (none counts as zero), per-tensor Adam.
        ref_opt.zero_grad()
        _rank_loss(reference, step).backward()
        grads = allgather(
            [
                np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy()
                for p in reference.parameters()
            ]
        )
        for i, p in enumerate(reference.parameters()):
            p.grad = torch.from_numpy(np.mean([g[i] for g in grads], axis=0))
        expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
        np.testing.assert_allclose(flat.grad.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        # The module's gradients are still views of flat.grad (the one the optimiser reads).
        for p in net.parameters():
            assert p.grad is not None and p.grad.untyped_storage().data_ptr() == flat.grad.data_ptr()
        opt.step()
        ref_opt.step()
        for (name, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(
                p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name
            )
    # The module's parameters are views of the flat tensor, and its state_dict still round-trips.
    with torch.no_grad():
        flat.add_(1.0)
    np.testing.assert_allclose(net.unused.detach().numpy(), np.full(4, 2.0))
    fresh = Net()
    fresh.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(fresh.body[0].weight.detach().numpy(), net.body[0].weight.detach().numpy())
    assert len(set(allgather(flat.detach().numpy().tobytes()))) == 1, "ranks disagree after flat Adam steps"
    assert len(set(allgather(flat.grad.numpy().tobytes()))) == 1, "ranks disagree on the flat gradient"
    # The old calling form with the flat Parameter itself is gone: a clear error, on every rank count.
    try:
        mpi_avg_grads(flat)
    except TypeError as e:
        assert "takes the module" in str(e), e
    else:
        raise AssertionError("mpi_avg_grads accepted the flat Parameter")
    # Breaking the contract is an error, not a silent stop of training: either zero_grad() sets to None.
    for breaker in ("optimizer", "module"):
        flat = flatten_parameters(net)
        opt = torch.optim.Adam([flat], lr=1e-2)
        (opt.zero_grad if breaker == "optimizer" else net.zero_grad)()
        _rank_loss(net, 9).backward()
        try:
            mpi_avg_grads(net)
        except RuntimeError as e:
            assert "flat.grad.zero_()" in str(e), e
        else:
            raise AssertionError(f"mpi_avg_grads accepted gradients detached by {breaker}.zero_grad()")


def check_mixed_dtypes():
    """Parameters of two dtypes: averaged over a common dtype, each gradient keeps its own."""
    torch.manual_seed(0)
    net = Net()
    net.rank1_only.data = net.rank1_only.data.double()
    net.body[2].double()
    torch.manual_seed(100 + proc_id())
    hidden = torch.tanh(net.body[0](torch.randn(7, 5)))
    loss = net.body[2](hidden.double()).pow(2).sum()
    if proc_id() == 1:
        loss = loss + (net.rank1_only * 3.0).sum()
    loss.backward()
    mine = {n: (None if p.grad is None else p.grad.clone().numpy()) for n, p in net.named_parameters()}
    everyone = allgather(mine)
    mpi_avg_grads(net)
    for name, p in net.named_parameters():
        grads = [g[name] for g in everyone]
        if all(g is None for g in grads):
            assert p.grad is None, name
            continue
        assert p.grad.dtype == p.dtype, f"{name}: gradient became {p.grad.dtype}, parameter is {p.dtype}"
        expected = np.mean([np.zeros(p.shape) if g is None else g for g in grads], axis=0)
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=name)
    if num_procs() > 1:
        assert net.rank1_only.grad.dtype == torch.float64
    assert len(set(allgather(net.body[0].weight.grad.numpy().tobytes()))) == 1


def check_buffer_follows_the_module():
    """The gradient buffer lives on the module: a copy, a pickled module, or a module whose trainable
    parameters changed gets a fresh one, and still averages right (no stale state from the original)."""
    import copy
    import pickle

    torch.manual_seed(0)
    net = Net()
    _rank_loss(net, 0).backward()
    mpi_avg_grads(net)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        other.zero_grad()
        _rank_loss(other, 1).backward()
        mine = [p.grad.clone() for p in other.body.parameters()]
        everyone = allgather([g.numpy() for g in mine])
        mpi_avg_grads(other)
        for i, p in enumerate(other.body.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), np.mean([e[i] for e in everyone], axis=0), rtol=1e-6)
    net.body[0].weight.requires_grad_(False)  # the set of trainable parameters changes
    net.zero_grad()
    _rank_loss(net, 2).backward()
    grads = allgather(net.body[2].weight.grad.numpy().copy())
    mpi_avg_grads(net)
    np.testing.assert_allclose(net.body[2].weight.grad.numpy(), np.mean(grads, axis=0), rtol=1e-6)
    assert net.body[0].weight.grad is None


def check_sync_params():
    torch.manual_seed(proc_id())  # different parameters on every rank
    net = Net()
    before = [t.detach().clone() for t in list(net.parameters()) + list(net.buffers())]
    root_before = allgather([t.numpy().tobytes() for t in before])[0]
    sync_params(net)
    after = [t.detach().numpy().tobytes() for t in list(net.parameters()) + list(net.buffers())]
    assert after == root_before, "parameters differ from rank 0's after sync_params"
    assert len({b"".join(a) for a in allgather(after)}) == 1


def check_statistics():
    rng = np.random.default_rng(proc_id())
    # Rank 1 holds nothing (an epoch in which no episode ended there).
    x = np.zeros(0) if proc_id() == 1 else rng.normal(proc_id(), 1 + proc_id(), size=10 + 3 * proc_id())
    allx = np.concatenate(allgather(x))
    mean, std, lo, hi = mpi_statistics_scalar(x, with_min_and_max=True)
    np.testing.assert_allclose(
        [mean, std, lo, hi], [allx.mean(), allx.std(), allx.min(), allx.max()], rtol=1e-12
    )
    m2, s2 = mpi_statistics_scalar(list(x))
    np.testing.assert_allclose([m2, s2], [allx.mean(), allx.std()], rtol=1e-12)
    empty = mpi_statistics_scalar([], with_min_and_max=True)
    assert all(np.isnan(v) for v in empty), empty


def check_threads():
    threads = setup_pytorch_for_mpi()
    assert threads >= 1 and torch.get_num_threads() == threads


if __name__ == "__main__":
    for name in sys.argv[1:]:
        globals()[f"check_{name}"]()
        MPI.COMM_WORLD.Barrier()
        if proc_id() == 0:
            print(f"OK {name} np={num_procs()}", flush=True)
