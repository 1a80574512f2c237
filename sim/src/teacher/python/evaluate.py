"""Score a submission for the @@TITLE@@ task.

Usage: python evaluate.py --submission_file submission.csv

The submission must hold one row for every row of data/test.csv, with the columns `id` and
`@@TARGET_NAME@@`. Prints one JSON object with the metrics (@@METRIC_DOC@@) and nothing else. An
invalid submission is explained on stderr and the script exits with status 1.
"""

import argparse
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import @@METRIC_IMPORTS@@  # noqa: E402

ANSWERS = "data/answers.csv"
TARGET = @@TARGET@@
@@CONSTANTS@@

def fail(message):
    print(f"invalid submission: {message}", file=sys.stderr)
    sys.exit(1)


def read_submission(path):
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        fail(f"{path} does not exist")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        fail(f"{path} is not a readable CSV file ({error})")


def aligned_predictions(submission, answers):
    """The submitted values in the order of the answers, after checking columns and ids."""
    missing = [column for column in ("id", TARGET) if column not in submission.columns]
    if missing:
        fail(f"missing column(s) {missing}; expected the columns ['id', '{TARGET}']")
    if submission["id"].duplicated().any():
        fail("the id column has duplicate values")
    expected, submitted = set(answers["id"]), set(submission["id"])
    if len(submission) != len(answers) or submitted != expected:
        fail(
            f"the ids must be exactly the {len(answers)} ids of data/test.csv "
            f"({len(expected - submitted)} missing, {len(submitted - expected)} unexpected)"
        )
    values = pd.to_numeric(submission.set_index("id")[TARGET], errors="coerce")
    values = values.reindex(answers["id"]).to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        fail(f"{int(np.sum(~np.isfinite(values)))} prediction(s) are empty or not finite numbers")
    return values


def main():
    parser = argparse.ArgumentParser(description="Score a submission file against data/answers.csv.")
    parser.add_argument("--submission_file", required=True, help="CSV file with the columns id and the target")
    args = parser.parse_args()

    answers = pd.read_csv(ANSWERS)
    predicted = aligned_predictions(read_submission(args.submission_file), answers)
@@SCORING@@
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
