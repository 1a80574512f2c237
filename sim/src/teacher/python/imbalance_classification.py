def imbalance_classes(train, rng):
    """Keeps every row of the most frequent class and a halving share of each rarer class."""
    labels = train[TARGET].to_numpy()
    counts = train[TARGET].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    kept = []
    for rank, (label, count) in enumerate(counts.items()):
        rows = np.flatnonzero(labels == label)
        share = 1.0 if rank == 0 else max(MIN_SHARE, 0.5**rank)
        n_keep = min(count, max(MIN_ROWS_PER_CLASS, round(share * count)))
        kept.append(rng.choice(rows, size=n_keep, replace=False))
    return train.iloc[np.sort(np.concatenate(kept))]