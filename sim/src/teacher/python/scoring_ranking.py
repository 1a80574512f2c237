    truth = answers[TARGET].to_numpy(dtype=np.float64)
    relevance = @@RELEVANCE@@
    scores = {
        "ndcg_at_10": float(ndcg_score([relevance], [predicted], k=10)),
        "ndcg": float(ndcg_score([relevance], [predicted])),
    }