def hide_labels(train, rng):
    """Keeps the target of about a quarter of the training rows; the others are left empty."""
    keep = np.zeros(len(train), dtype=bool)
    keep[rng.choice(len(train), size=round(LABELLED_SHARE * len(train)), replace=False)] = True
    train[TARGET] = train[TARGET].where(keep)
    return train