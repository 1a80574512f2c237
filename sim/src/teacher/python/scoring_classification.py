    if not np.all(predicted == np.round(predicted)):
        fail("predictions must be integer class indices")
    truth = truth.astype(np.int64)
    predicted = predicted.astype(np.int64)
    scores = {"accuracy": accuracy(truth, predicted), "f1_macro": f1_macro(truth, predicted)}
