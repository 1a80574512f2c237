def flip_labels(train, rng):
    """Gives a tenth of the training rows a wrong label, drawn from the other classes."""
    labels = train[TARGET].to_numpy().copy()
    classes = np.unique(labels)
    rows = rng.choice(len(labels), size=round(NOISE_SHARE * len(labels)), replace=False)
    for row in rows:
        labels[row] = rng.choice(classes[classes != labels[row]])
    train[TARGET] = labels
    return train