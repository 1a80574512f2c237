def shift_feature(frame):
    """The feature with the most distinct values (the first one on a tie)."""
    counts = [frame[name].nunique() for name in FEATURES]
    return FEATURES[int(np.argmax(counts))]


def shifted_split(frame, rng):
    """Like `split`, but the test rows are those with the highest values of the shift feature;
    train and validation share the lower part of its range."""
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    n_train = len(frame) * TRAIN_PERCENT // 100
    n_validation = len(frame) * VALIDATION_PERCENT // 100
    shift = shift_feature(frame)
    order = np.argsort(frame[shift].to_numpy(dtype=np.float64), kind="stable")
    rest, test = np.sort(order[: n_train + n_validation]), np.sort(order[n_train + n_validation :])
    print(f"shift feature: {shift}")
    return frame.iloc[rest[:n_train]].copy(), frame.iloc[rest[n_train:]].copy(), frame.iloc[test].copy()