    scores = {"rmse": rmse(truth, predicted), "mae": mae(truth, predicted)}
