"""Score a submission for the @@TITLE@@ task.

Usage: python evaluate.py --submission_file submission.csv

The submission must hold one row for every row of data/test.csv, with the columns `id` and
`@@TARGET_NAME@@`. Prints one JSON object with the metrics (@@METRIC_DOC@@) and nothing else. An
invalid submission is explained on stderr and the script exits with status 1.

Only the standard library and numpy are imported, so that scoring starts in a fraction of a second.
"""

import argparse
import csv
import json
import math
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

ANSWERS = "data/answers.csv"
TARGET = @@TARGET@@
@@CONSTANTS@@

def fail(message):
    print(f"invalid submission: {message}", file=sys.stderr)
    sys.exit(1)


def read_table(handle):
    """The header and the rows of a CSV file."""
    rows = list(csv.reader(handle))
    if not rows:
        raise csv.Error("the file is empty")
    return rows[0], rows[1:]


def read_answers():
    with open(ANSWERS, newline="", encoding="utf-8") as handle:
        return read_table(handle)


def read_submission(path):
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return read_table(handle)
    except FileNotFoundError:
        fail(f"{path} does not exist")
    except (csv.Error, UnicodeDecodeError) as error:
        fail(f"{path} is not a readable CSV file ({error})")


def column(table, name):
    header, rows = table
    index = header.index(name)
    return [row[index] if index < len(row) else "" for row in rows]


def id_key(text):
    """An id as written, with `3` and `3.0` the same id."""
    try:
        number = float(text)
    except ValueError:
        return text.strip()
    return int(number) if number.is_integer() else number


def number(text):
    try:
        return float(text)
    except ValueError:
        return math.nan


def aligned_predictions(submission, ids):
    """The submitted values in the order of the answers' `ids`, after checking columns and ids."""
    missing = [name for name in ("id", TARGET) if name not in submission[0]]
    if missing:
        fail(f"missing column(s) {missing}; expected the columns ['id', '{TARGET}']")
    submitted_ids = [id_key(text) for text in column(submission, "id")]
    if len(set(submitted_ids)) != len(submitted_ids):
        fail("the id column has duplicate values")
    expected, submitted = set(ids), set(submitted_ids)
    if len(submitted_ids) != len(ids) or submitted != expected:
        fail(
            f"the ids must be exactly the {len(ids)} ids of data/test.csv "
            f"({len(expected - submitted)} missing, {len(submitted - expected)} unexpected)"
        )
    by_id = dict(zip(submitted_ids, column(submission, TARGET)))
    values = np.array([number(by_id[key]) for key in ids], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        fail(f"{int(np.sum(~np.isfinite(values)))} prediction(s) are empty or not finite numbers")
    return values
@@METRICS@@

def main():
    parser = argparse.ArgumentParser(description="Score a submission file against data/answers.csv.")
    parser.add_argument("--submission_file", required=True, help="CSV file with the columns id and the target")
    args = parser.parse_args()

    answers = read_answers()
    ids = [id_key(text) for text in column(answers, "id")]
    truth = np.array([float(text) for text in column(answers, TARGET)], dtype=np.float64)
    predicted = aligned_predictions(read_submission(args.submission_file), ids)
@@SCORING@@
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
