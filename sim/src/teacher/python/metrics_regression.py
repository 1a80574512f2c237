

def rmse(truth, predicted):
    return float(np.sqrt(np.mean((truth - predicted) ** 2)))


def mae(truth, predicted):
    return float(np.mean(np.abs(truth - predicted)))
