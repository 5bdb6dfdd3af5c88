"""The update's speed tricks give exactly what the plain code would: MinibatchTable, StatSums and
clip_grad_norm_flat."""

import torch

from spinppo.core.buffer import Batch
from spinppo.core.minibatches import Minibatch, MinibatchTable, StatSums
from spinppo.utils.mpi_pytorch import clip_grad_norm_flat, flatten_parameters


def test_minibatches_hold_every_row_once_per_pass_with_named_fields_of_the_right_shape():
    n = 12
    obs, act, adv = torch.randn(n, 3), torch.randint(0, 4, (n,)), torch.arange(n, dtype=torch.float32)
    ret, logp_old, v_old = torch.randn(n), torch.randn(n), torch.randn(n)
    table = MinibatchTable(Batch(obs=obs, act=act, adv=adv, ret=ret, logp_old=logp_old, v_old=v_old))
    torch.manual_seed(0)
    seen = []
    for mb in table.shuffled(4):
        assert isinstance(mb, Minibatch)
        assert mb.obs.shape == (4, 3) and mb.act.shape == (4,) and mb.adv.shape == (4,)
        rows = mb.adv.long()
        assert torch.equal(mb.obs, obs[rows]) and torch.equal(mb.act, act[rows].float())
        assert torch.equal(mb.ret, ret[rows]) and torch.equal(mb.logp_old, logp_old[rows])
        assert torch.equal(mb.v_old, v_old[rows])
        assert mb.memory is None and mb.starts is None and mb.mask is None and mb.dist_old is None
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))
    # The order is torch.randperm's: the same seed, the same minibatches (resume depends on it).
    torch.manual_seed(0)
    perm = torch.randperm(n)
    assert seen == perm.tolist()
    assert len(list(table.shuffled(5))) == 2  # rows left over from a minibatch are not used in a pass


def test_a_recurrent_batchs_sequences_stay_whole_with_their_memory_masks_and_old_distributions():
    """Rows of [n, L] fields (sequences): each minibatch row is one whole sequence, its memory, bool starts
    and mask kept bool; ``obs`` given to the table replaces the batch's; ``dist_old`` travels with its row."""
    n, length = 6, 3
    seq = torch.arange(n * length, dtype=torch.float32).reshape(n, length)  # row i: 3i, 3i+1, 3i+2
    batch = Batch(
        obs=torch.zeros(n, length, 2),
        act=seq,
        adv=seq + 0.5,
        ret=seq,
        logp_old=seq,
        v_old=seq,
        memory=torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4),
        starts=seq.long() % 2 == 0,
        mask=seq.long() % 3 != 2,
    )
    obs = seq[..., None].repeat(1, 1, 2)  # what the update hands out instead (PPO: normalised)
    dist_old = seq[..., None] * 10
    table = MinibatchTable(batch, obs=obs, dist_old=dist_old)
    for mb in table.shuffled(2):
        rows = (mb.act[:, 0] // length).long()
        assert torch.equal(mb.obs, obs[rows]) and torch.equal(mb.adv, batch.adv[rows])
        assert torch.equal(mb.memory, batch.memory[rows]) and torch.equal(mb.dist_old, dist_old[rows])
        assert mb.starts.dtype == torch.bool and torch.equal(mb.starts, batch.starts[rows])
        assert mb.mask.dtype == torch.bool and torch.equal(mb.mask, batch.mask[rows])


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
