"""Baseline for the @@TITLE@@ task: logistic regression on the @@K_FEATURES@@ features that
best separate the classes on their own.

A deliberately simple starting point: the features are standardised and ranked by their ANOVA
F-score on the training rows, and only the best @@K_FEATURES@@ of the @@N_FEATURES@@ are used. Trains on
@@TRAIN_ROWS@@data/train.csv, reports the accuracy on data/validation.csv, predicts every row of
data/test.csv and writes submission.csv with the columns `id` and `@@TARGET_NAME@@`.
"""

import numpy as np
import pandas as pd
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@
K_FEATURES = @@K_FEATURES@@  # features the baseline keeps


def main():
@@LOAD_DATA@@
    model = make_pipeline(VarianceThreshold(), StandardScaler(), SelectKBest(f_classif, k=K_FEATURES), LogisticRegression(max_iter=1000))
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=np.int64))

    predicted = model.predict(validation[features].to_numpy(dtype=np.float64))
    accuracy = accuracy_score(validation[TARGET].to_numpy(dtype=np.int64), predicted)
    print(f"validation accuracy: {accuracy:.4f}")

    predictions = model.predict(test[features].to_numpy(dtype=np.float64))
    submission = pd.DataFrame({"id": test["id"], TARGET: predictions.astype(np.int64)})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
