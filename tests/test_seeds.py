"""sitcli/seeds.py: every (seed, index, stream) has its own random stream, on the CPU too."""

import torch

from sitcli.seeds import index_generator, labels_and_noise


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
