def hide_labels(train, rng):
    """Keeps the label of about a quarter of the training rows, at least two per class."""
    labels = train[TARGET].to_numpy()
    keep = np.zeros(len(train), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_keep = min(len(rows), max(2, round(LABELLED_SHARE * len(rows))))
        keep[rng.choice(rows, size=n_keep, replace=False)] = True
    train[TARGET] = train[TARGET].astype("Int64").where(keep)
    return train