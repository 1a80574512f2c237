"""Baseline for the @@TITLE@@ task: @@MODEL_DOC@@ on standardised features.

Trains on @@TRAIN_ROWS@@data/train.csv, scores every row (@@SCORE_DOC@@), reports the NDCG
of the top ten rows of data/validation.csv, and writes submission.csv with the columns `id` and
`@@TARGET_NAME@@` (the score; higher means ranked earlier).
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import @@MODEL_CLASS@@
from sklearn.metrics import ndcg_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@
@@RELEVANCE_CONSTANT@@

def relevance(frame):
    """How relevant each row is: what the ranking should put first."""
    truth = frame[TARGET].to_numpy(dtype=np.float64)
    return @@RELEVANCE@@


def scores(model, frame, features):
    """The ranking score of each row."""
    inputs = frame[features].to_numpy(dtype=np.float64)
    return @@SCORES@@


def main():
@@LOAD_DATA@@
    model = make_pipeline(StandardScaler(), @@MODEL@@)
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=@@FIT_DTYPE@@))

    ndcg = ndcg_score([relevance(validation)], [scores(model, validation, features)], k=10)
    print(f"validation ndcg@10: {ndcg:.4f}")

    submission = pd.DataFrame({"id": test["id"], TARGET: scores(model, test, features)})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
