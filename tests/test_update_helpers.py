"""The update's speed tricks give exactly what the plain code would: MinibatchTable, StatSums and
clip_grad_norm_flat."""

import torch

from spinppo.core.minibatches import MinibatchTable, StatSums
from spinppo.utils.mpi_pytorch import clip_grad_norm_flat, flatten_parameters


def test_minibatches_hold_every_row_once_per_pass_with_named_fields_of_the_right_shape():
    n = 12
    obs, act, adv = torch.randn(n, 3), torch.randint(0, 4, (n,)), torch.arange(n, dtype=torch.float32)
    table = MinibatchTable(obs=obs, act=act, adv=adv)
    torch.manual_seed(0)
    seen = []
    for mb in table.shuffled(4):
        assert mb.obs.shape == (4, 3) and mb.act.shape == (4,) and mb.adv.shape == (4,)
        rows = mb.adv.long()
        assert torch.equal(mb.obs, obs[rows]) and torch.equal(mb.act, act[rows].float())
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))
    # The order is torch.randperm's: the same seed, the same minibatches (resume depends on it).
    torch.manual_seed(0)
    perm = torch.randperm(n)
    assert seen == perm.tolist()
    assert len(list(table.shuffled(5))) == 2  # rows left over from a minibatch are not used in a pass


def test_stat_sums_are_means_by_name():
    stats = StatSums("LossPi", "KL")
    for loss, kl in ((1.0, 0.5), (3.0, 1.5)):
        stats.add(LossPi=torch.tensor(loss), KL=torch.tensor(kl))
    assert stats.means(2) == {"LossPi": 2.0, "KL": 1.0}
    assert stats.mean("KL", 2) == 1.0
    stats.zero()
    assert stats.means(1) == {"LossPi": 0.0, "KL": 0.0}


def test_clip_grad_norm_flat_is_clip_grad_norm_bit_for_bit():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    flat = flatten_parameters(net)
    for scale in (0.01, 1.0, 100.0):  # below and above the limit
        grad = torch.randn_like(flat) * scale
        flat.grad.copy_(grad)
        clip_grad_norm_flat(flat, 0.5)
        reference = torch.nn.Parameter(flat.detach().clone())
        reference.grad = grad.clone()
        torch.nn.utils.clip_grad_norm_([reference], 0.5)
        assert torch.equal(flat.grad, reference.grad)
        assert torch.equal(net[0].weight.grad.reshape(-1), flat.grad[: net[0].weight.numel()])
