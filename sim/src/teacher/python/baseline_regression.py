"""Baseline for the @@TITLE@@ task: ridge regression on standardised features.

Trains on @@TRAIN_ROWS@@data/train.csv, reports the RMSE on data/validation.csv, predicts every
row of data/test.csv and writes submission.csv with the columns `id` and `@@TARGET_NAME@@`.
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@


def main():
@@LOAD_DATA@@
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=np.float64))

    predicted = model.predict(validation[features].to_numpy(dtype=np.float64))
    errors = predicted - validation[TARGET].to_numpy(dtype=np.float64)
    print(f"validation rmse: {np.sqrt(np.mean(errors**2)):.4f}")

    predictions = model.predict(test[features].to_numpy(dtype=np.float64))
    submission = pd.DataFrame({"id": test["id"], TARGET: predictions})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
