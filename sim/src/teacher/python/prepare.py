"""Prepare the data of the @@TITLE@@ task from the raw parquet export of @@DATASET@@.

Reads the raw parquet files, shuffles the rows with a fixed seed and splits them @@SHARES@@ into
training, validation and test sets.@@TWIST_DOC@@ Writes:

    data/train.csv, data/validation.csv   `id`, the features and the target
    data/test.csv                         `id` and the features (no target)
    data/answers.csv                      `id` and the target of every test row
    sample_submission.csv                 a naive prediction for every test row
"""

from pathlib import Path

import numpy as np
import pandas as pd

SEED = @@SEED@@
RAW_FILES = @@RAW_FILES@@
FEATURES = @@FEATURES@@
TARGET = @@TARGET@@
TRAIN_PERCENT = @@TRAIN_PERCENT@@
VALIDATION_PERCENT = @@VALIDATION_PERCENT@@
DATA_DIR = Path("data")
@@TWIST_CONSTANTS@@

def load_raw():
    """Every raw row with the feature and target columns; rows without a target are dropped."""
    frame = pd.concat([pd.read_parquet(path) for path in RAW_FILES], ignore_index=True)
    return frame[FEATURES + [TARGET]].dropna(subset=[TARGET])


def split(frame, rng):
    """Shuffles the rows, numbers them with an `id` column and cuts train/validation/test."""
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    n_train = len(frame) * TRAIN_PERCENT // 100
    n_validation = len(frame) * VALIDATION_PERCENT // 100
    train = frame.iloc[:n_train].copy()
    validation = frame.iloc[n_train : n_train + n_validation].copy()
    test = frame.iloc[n_train + n_validation :].copy()
    return train, validation, test
@@TWIST_FUNCTION@@

@@NAIVE@@


def main():
    rng = np.random.default_rng(SEED)
    train, validation, test = @@SPLIT@@(load_raw(), rng)
@@TWIST_CALL@@
    DATA_DIR.mkdir(exist_ok=True)
    train.to_csv(DATA_DIR / "train.csv", index=False)
    validation.to_csv(DATA_DIR / "validation.csv", index=False)
    test.drop(columns=[TARGET]).to_csv(DATA_DIR / "test.csv", index=False)
    test[["id", TARGET]].to_csv(DATA_DIR / "answers.csv", index=False)

    sample = pd.DataFrame({"id": test["id"], TARGET: naive_prediction(train)})
    sample.to_csv("sample_submission.csv", index=False)
    print(f"wrote {len(train)} training, {len(validation)} validation and {len(test)} test rows")


if __name__ == "__main__":
    main()
