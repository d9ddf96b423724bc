"""clusters() merges band by band; it must find the same clusters as all bands' pairs at once."""

import numpy as np

from pipelines.minhash import band_collisions, clusters, components


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b], axis=1), axis=0) if len(a) else np.zeros((0, 2))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def test_clusters_join_chains_across_bands_and_leave_loners_alone():
    keys = np.array([[1, 10, 100],   # row 0 shares band 0 with row 1
                     [1, 11, 101],   # row 1 shares band 2 with row 2
                     [2, 12, 101],
                     [3, 13, 103],   # alone
                     [4, 14, 104],   # shares band 1 with row 5
                     [5, 14, 105]], dtype=np.uint64)
    labels = clusters(len(keys), keys.T)
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5] != labels[0]
    assert len({labels[0], labels[3], labels[4]}) == 3


def test_clusters_match_the_components_of_every_bands_pairs_at_once():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, bands = int(rng.integers(0, 300)), int(rng.integers(1, 6))
        keys = rng.integers(0, int(rng.integers(2, 400)), (n, bands)).astype(np.uint64)
        expected = components(n, *band_collisions(keys))
        labels = clusters(n, (column.copy() for column in keys.T))
        assert len(labels) == n and same_partition(labels, expected)
