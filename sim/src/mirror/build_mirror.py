"""Builds the data of gymforge's embedded Hub mirror.

Usage: python build_mirror.py OUT_DIR

Loads the small datasets that ship inside scikit-learn (iris, wine, breast_cancer, digits,
diabetes) and writes, for each one, the files the mirror serves:

    OUT_DIR/sklearn/<name>/default/train/0000.parquet   the data, one config and one split
    OUT_DIR/sklearn/<name>/first_rows.json              the viewer's /first-rows answer
    OUT_DIR/sklearn/<name>/manifest.json                everything else the mirror reports
    OUT_DIR/catalog.json                                the list of datasets

The parquet bytes are deterministic for a given set of library versions: no index, fixed
compression, fixed schema metadata. The sha256 of each parquet file doubles as the dataset's
revision (its first 40 hex digits), so a changed file means a changed revision.
"""

import datetime
import hashlib
import json
import os
import re
import sys

EXIT_MISSING_MODULE = 3

try:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sklearn
    from sklearn import datasets as skd
except ImportError as exc:  # reported to the caller as a clear error
    sys.stderr.write(
        "missing Python module: %s (the Hub mirror needs numpy, pandas, scikit-learn and pyarrow)\n"
        % (exc.name or exc)
    )
    sys.exit(EXIT_MISSING_MODULE)

OWNER = "sklearn"
CONFIG = "default"
SPLIT = "train"
PARQUET_NAME = "0000.parquet"
FIRST_ROWS = 100
COMPRESSION = "snappy"

# name -> (loader keyword arguments, task category, license of the underlying data)
DATASETS = [
    ("iris", {}, "classification", "cc-by-4.0"),
    ("wine", {}, "classification", "cc-by-4.0"),
    ("breast_cancer", {}, "classification", "cc-by-4.0"),
    ("digits", {}, "classification", "cc-by-4.0"),
    # The original measurements, not the mean-centred and scaled copy.
    ("diabetes", {"scaled": False}, "regression", "unknown"),
]


def sanitise(name):
    """'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def describe(descr):
    """Title and first prose paragraph of a scikit-learn DESCR text (reStructuredText)."""
    lines = descr.splitlines()
    title = ""
    for i, line in enumerate(lines[:-1]):
        under = lines[i + 1].strip()
        if line.strip() and under and set(under) <= set("-=~") and len(under) >= 3:
            title = line.strip()
            break
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []

    def is_prose(par):
        first = par[0]
        if first.startswith((" ", "\t", "..", ":", "*", "-", "=", "|")):
            return False
        if len(par) >= 2 and set(par[1].strip()) <= set("-=~"):
            return False  # a section title
        return any(ch.isalpha() for ch in first)

    for par in paragraphs:
        if is_prose(par):
            return title, " ".join(l.strip() for l in par)
    return title, ""


def size_category(n):
    if n < 1_000:
        return "n<1K"
    if n < 10_000:
        return "1K<n<10K"
    if n < 100_000:
        return "10K<n<100K"
    return "100K<n<1M"


def hf_feature(feature):
    """A feature in the shape of the `datasets` library's Features JSON."""
    if feature.get("class_names") is not None:
        return {"names": feature["class_names"], "_type": "ClassLabel"}
    return {"dtype": feature["dtype"], "_type": "Value"}


def cell(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def build(name, kwargs, task, license_id, out_dir):
    loader = getattr(skd, "load_" + name)
    bunch = loader(as_frame=True, **kwargs)
    frame = bunch.frame
    feature_names = [str(f) for f in bunch.feature_names]
    columns = [sanitise(f) for f in feature_names]
    if len(set(columns)) != len(columns) or "target" in columns:
        raise SystemExit("column names of %s collide after sanitising" % name)

    data = pd.DataFrame(
        {col: frame[orig].to_numpy() for col, orig in zip(columns, feature_names)}
    )
    target = frame["target"] if "target" in frame else bunch.target
    features = []
    for col in columns:
        features.append({"name": col, "dtype": str(data[col].dtype)})
    if task == "classification":
        data["target"] = np.asarray(target, dtype=np.int64)
        class_names = [str(c) for c in bunch.target_names]
        features.append({"name": "target", "dtype": "int64", "class_names": class_names})
    else:
        data["target"] = np.asarray(target, dtype=np.float64)
        features.append({"name": "target", "dtype": "float64"})

    dataset_id = "%s/%s" % (OWNER, name)
    ds_dir = os.path.join(out_dir, OWNER, name)
    split_dir = os.path.join(ds_dir, CONFIG, SPLIT)
    os.makedirs(split_dir, exist_ok=True)

    hf_features = {f["name"]: hf_feature(f) for f in features}
    table = pa.Table.from_pandas(data, preserve_index=False)
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": hf_features}})}
    )
    parquet_path = os.path.join(split_dir, PARQUET_NAME)
    pq.write_table(table, parquet_path, compression=COMPRESSION)
    with open(parquet_path, "rb") as fh:
        parquet_bytes = fh.read()
    digest = hashlib.sha256(parquet_bytes).hexdigest()

    head = data.head(FIRST_ROWS)
    first_rows = {
        "dataset": dataset_id,
        "config": CONFIG,
        "split": SPLIT,
        "features": [
            {"feature_idx": i, "name": f["name"], "type": hf_feature(f)}
            for i, f in enumerate(features)
        ],
        "rows": [
            {
                "row_idx": i,
                "row": {col: cell(head[col].iloc[i]) for col in head.columns},
                "truncated_cells": [],
            }
            for i in range(len(head))
        ],
        "truncated": len(data) > FIRST_ROWS,
    }
    with open(os.path.join(ds_dir, "first_rows.json"), "w") as fh:
        json.dump(first_rows, fh, allow_nan=False)

    title, description = describe(bunch.DESCR)
    manifest = {
        "id": dataset_id,
        "owner": OWNER,
        "name": name,
        "title": title or name,
        "description": description,
        "source": "scikit-learn %s, sklearn.datasets.load_%s(%s)"
        % (
            sklearn.__version__,
            name,
            ", ".join(["as_frame=True"] + ["%s=%r" % kv for kv in sorted(kwargs.items())]),
        ),
        "mirror_note": (
            "This is scikit-learn's bundled copy of the dataset (sklearn.datasets.load_%s), "
            "served by gymforge's embedded Hub mirror; it was not downloaded from the Hugging "
            "Face Hub." % name
        ),
        "license": license_id,
        "task_category": task,
        "features": features,
        "target": "target",
        "config": CONFIG,
        "split": SPLIT,
        "num_rows": int(len(data)),
        "num_columns": int(len(data.columns)),
        "num_bytes_memory": int(data.memory_usage(index=False, deep=True).sum()),
        "size_category": size_category(len(data)),
        "parquet": {
            "path": "%s/%s/%s" % (CONFIG, SPLIT, PARQUET_NAME),
            "filename": PARQUET_NAME,
            "bytes": len(parquet_bytes),
            "sha256": digest,
        },
        "parquet_bytes": len(parquet_bytes),
        "sha256": digest,
        "revision": digest[:40],
    }
    with open(os.path.join(ds_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    print(
        "built %s: %d rows, %d columns, %d parquet bytes"
        % (dataset_id, len(data), len(data.columns), len(parquet_bytes)),
        flush=True,
    )
    return manifest


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python build_mirror.py OUT_DIR\n")
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for name, kwargs, task, license_id in DATASETS:
        m = build(name, kwargs, task, license_id, out_dir)
        entries.append(
            {
                "id": m["id"],
                "path": "%s/%s" % (OWNER, name),
                "task_category": m["task_category"],
                "num_rows": m["num_rows"],
                "revision": m["revision"],
            }
        )
    catalog = {
        "format": 1,
        "generator": "gymforge build_mirror.py",
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        ),
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "datasets": entries,
    }
    with open(os.path.join(out_dir, "catalog.json"), "w") as fh:
        json.dump(catalog, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
