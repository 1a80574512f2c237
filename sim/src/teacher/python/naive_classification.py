def naive_prediction(train):
    """The most frequent training label: what a model that ignores the features would say."""
    return int(train[TARGET].dropna().mode().min())