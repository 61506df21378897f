"""Reads criterion's JSON output (shared by bench-table.py and go-table.py)."""
import glob
import json
import os


def results(crit_dir):
    """Yields (benchmark.json metadata, median ns) for every benchmark criterion measured."""
    for bench in glob.glob(os.path.join(crit_dir, "**", "new", "benchmark.json"), recursive=True):
        est_path = os.path.join(os.path.dirname(bench), "estimates.json")
        if not os.path.exists(est_path):
            continue
        with open(bench) as f:
            meta = json.load(f)
        with open(est_path) as f:
            median = json.load(f)["median"]["point_estimate"]
        yield meta, median
