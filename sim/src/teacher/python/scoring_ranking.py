    relevance = @@RELEVANCE@@
    scores = {"ndcg_at_10": ndcg(relevance, predicted, k=10), "ndcg": ndcg(relevance, predicted)}
