"""Padding waste with and without length bucketing (computed, not timed)."""
from .harness import Variant


def padding_group(settings, keep):
    """Padding waste on a long-tailed (log-normal) length distribution, batch 32."""
    import numpy as np
    from gluonbert.data import BucketSampler, padding_waste
    from gluonbert.data.batching import _PlainSampler
    rng = np.random.RandomState(0)
    lengths = np.clip(rng.lognormal(np.log(120), 0.7, settings['padding_examples']),
                      8, 512).astype(int)
    label = (f'{len(lengths)} examples, lengths median {int(np.median(lengths))}, '
             f'p99 {int(np.percentile(lengths, 99))}, max {lengths.max()}; batch 32')
    rows = []
    for name, sampler in (('no bucketing (shuffled)', _PlainSampler(lengths, 32, seed=0)),
                          ('BucketSampler, 10 buckets', BucketSampler(lengths, 32, seed=0)),
                          ('BucketSampler, 100 buckets',
                           BucketSampler(lengths, 32, num_buckets=100, seed=0)),
                          ('sorted by length (lower bound)',
                           BucketSampler(lengths, 32, shuffle=False))):
        if keep(name):
            waste = [100 * padding_waste(lengths, sampler.batches())]
            if sampler.shuffle:  # a few epochs: the waste varies with the shuffle
                waste = []
                for epoch in range(3):
                    sampler.set_epoch(epoch)
                    waste.append(100 * padding_waste(lengths, sampler.batches()))
            variant = Variant('padding waste', name, '% padding', 1, note=label)
            variant.speeds = waste
            rows.append(variant)
    return rows
