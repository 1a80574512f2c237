def naive_prediction(train):
    """The mean training target: what a model that ignores the features would say."""
    return float(train[TARGET].dropna().mean())