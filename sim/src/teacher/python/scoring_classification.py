    if not np.all(predicted == np.round(predicted)):
        fail("predictions must be integer class indices")
    truth = answers[TARGET].to_numpy(dtype=np.int64)
    predicted = predicted.astype(np.int64)
    scores = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }