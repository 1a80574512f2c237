def perturb_targets(train, rng):
    """Adds Gaussian noise of one target standard deviation to a tenth of the training targets."""
    targets = train[TARGET].to_numpy(dtype=np.float64).copy()
    rows = rng.choice(len(targets), size=round(NOISE_SHARE * len(targets)), replace=False)
    targets[rows] += rng.normal(0.0, targets.std(), size=len(rows))
    train[TARGET] = targets
    return train