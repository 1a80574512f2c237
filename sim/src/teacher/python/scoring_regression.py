    truth = answers[TARGET].to_numpy(dtype=np.float64)
    scores = {
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
    }