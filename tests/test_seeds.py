"""sitcli/seeds.py: every (seed, index, stream) has its own random stream, on the CPU too."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.seeds import balanced_labels, index_generator, labels_and_noise


def first_values(seed, index, stream=0, n=64):
    return torch.randn(n, generator=index_generator(seed, index, stream=stream))


def test_seed_zero_keeps_the_streams_sit_always_drew():
    for index in (0, 7, 12345):
        assert torch.equal(first_values(0, index), torch.randn(64, generator=torch.Generator().manual_seed(index)))


def test_the_seed_changes_labels_and_noise():
    y0, x0 = labels_and_noise(0, list(range(20)), (4,), 10, None)
    y1, x1 = labels_and_noise(1, list(range(20)), (4,), 10, None)
    assert not torch.equal(x0, x1) and not torch.equal(y0, y1)
    assert not torch.equal(labels_and_noise(2, [3], (4,), 10, None)[1], labels_and_noise(1, [3], (4,), 10, None)[1])


def test_sde_increments_do_not_reuse_the_starting_noise():
    # Before, stream 1 was seeded like stream 0 on the CPU: the increments were the starting noise.
    for seed in (0, 3):
        for index in range(20):
            start, increments = first_values(seed, index, n=512), first_values(seed, index, stream=1, n=64)
            assert not any(torch.equal(start[k : k + 64], increments) for k in range(512 - 64))


def test_within_a_seed_every_index_and_stream_has_its_own_seed():
    for seed in (0, 1, 999):
        seeds = {index_generator(seed, i, stream=s).initial_seed() % 2**32 for i in range(5000) for s in (0, 1)}
        assert len(seeds) == 10000


# ----------------------------------------------------------------------------- balanced labels


def _balanced(seed, indices, n, k):
    return balanced_labels(seed, list(indices), n, k)


def test_balanced_labels_hold_every_class_exactly_n_over_k_times():
    for n, k in ((1000, 10), (50, 50), (7, 1), (60, 4)):
        labels = _balanced(3, range(n), n, k)
        assert torch.equal(torch.bincount(labels, minlength=k), torch.full((k,), n // k))
    # Every block of K consecutive indices is a permutation, so every prefix of a multiple of K is balanced too.
    labels = _balanced(0, range(1000), 1000, 10).reshape(100, 10)
    assert torch.equal(labels.sort(dim=1).values, torch.arange(10).expand(100, 10))
    assert len({tuple(row.tolist()) for row in labels}) > 90  # the blocks are shuffled independently


def test_balanced_labels_do_not_depend_on_ranks_batches_or_restarts():
    n, k, seed = 120, 12, 5
    whole = _balanced(seed, range(n), n, k)
    for world in (1, 2, 3, 8):  # sample.py's split: rank r draws indices r, r + W, ... in batches
        got = torch.empty(n, dtype=torch.long)
        for rank in range(world):
            mine = list(range(n))[rank::world]
            for start in range(0, len(mine), 7):
                batch = mine[start : start + 7]
                got[batch] = labels_and_noise(seed, batch, (2,), k, None, labels="balanced", num_samples=n)[0]
        assert torch.equal(got, whole)
    # A restart draws only the missing indices, in any order; the labels of the rest are unchanged.
    missing = [97, 3, 50, 51, 119]
    assert torch.equal(_balanced(seed, missing, n, k), whole[missing])
    # An index's label depends on (seed, K, i) alone, not on N: a larger run extends a smaller one.
    assert torch.equal(_balanced(seed, range(n), 10 * n, k)[:n], whole)


def test_balanced_labels_are_deterministic_and_follow_the_seed():
    assert torch.equal(_balanced(1, range(100), 100, 10), _balanced(1, range(100), 100, 10))
    assert not torch.equal(_balanced(1, range(100), 100, 10), _balanced(2, range(100), 100, 10))
    assert not torch.equal(_balanced(1, range(100), 100, 10)[:50], _balanced(1, range(100), 100, 5)[:50])


def test_balanced_labels_keep_the_starting_noise_of_random_labels():
    _, noise_random = labels_and_noise(4, list(range(30)), (3,), 10, None)
    _, noise_balanced = labels_and_noise(4, list(range(30)), (3,), 10, None, labels="balanced", num_samples=30)
    assert torch.equal(noise_random, noise_balanced)


def test_balanced_labels_refuse_what_cannot_be_balanced():
    with pytest.raises(InputError, match=r"--num-samples 1001 is not a multiple of the 10 classes: pass "
                                         r"--num-samples 1000 or 1010, or --labels random"):
        _balanced(0, [0], 1001, 10)
    with pytest.raises(InputError, match="--num-samples 1000, or"):
        _balanced(0, [0], 999, 1000)
    with pytest.raises(InputError, match="--class-labels fixes every label"):
        labels_and_noise(0, [0], (1,), 10, "3", labels="balanced", num_samples=10)
    with pytest.raises(InputError, match="unknown --labels 'equal'"):
        labels_and_noise(0, [0], (1,), 10, None, labels="equal")
    with pytest.raises(ValueError, match="index 10 is outside the 10 samples"):
        _balanced(0, [10], 10, 5)
