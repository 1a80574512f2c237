

def discounted_gain(relevance, scores, discount):
    """The DCG of ranking by `scores`; rows with equal scores share the mean of their gains, so
    that the order of ties does not matter."""
    _, group, sizes = np.unique(-scores, return_inverse=True, return_counts=True)
    mean_gain = np.zeros(len(sizes))
    np.add.at(mean_gain, group.ravel(), relevance)
    mean_gain /= sizes
    last = np.cumsum(sizes) - 1
    group_discount = np.diff(np.concatenate(([0.0], np.cumsum(discount)[last])))
    return float(np.sum(mean_gain * group_discount))


def ndcg(relevance, scores, k=None):
    """Normalised discounted cumulative gain of the whole ranking, or of its top `k` rows."""
    discount = 1 / np.log2(np.arange(len(relevance)) + 2)
    if k is not None:
        discount[k:] = 0
    best = float(np.sum(np.sort(relevance)[::-1] * discount))
    return discounted_gain(relevance, scores, discount) / best if best > 0 else 0.0
