"""Compare the style representations on real data: writer retrieval, real-image consistency, silhouette.

Usage: python benchmarks/style_representations.py --data ../shared/femnist [--k 7]

For each digit and representation it reports
* retrieval: split each writer's images of the digit (writers with at least 4) into two random
  halves; the share of writers whose first-half style vector is nearest to their own second-half
  vector among all second halves (chance is 1 / writers);
* consistency: the share of single real images placed (nearest centroid) in their writer's cluster,
  and the share expected by chance from the cluster sizes alone;
* silhouette of the k-means clustering.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.clustering import fit_digit_clustering  # noqa: E402
from engine.dataset import DIGITS, load_dataset  # noqa: E402
from engine.style import REPRESENTATIONS, image_features  # noqa: E402


def split_half_retrieval(dataset, clustering, digit, seed=0) -> float:
    rng = np.random.default_rng(seed)
    first, second = [], []
    for writer in clustering.writers:
        indices = dataset.cell_indices(writer, digit)
        if len(indices) < 4:
            continue
        order = rng.permutation(indices)
        half = len(order) // 2
        for target, part in ((first, order[:half]), (second, order[half:])):
            features = image_features(dataset.images[np.sort(part)], clustering.representation)
            target.append(clustering.transform(features.mean(axis=0, keepdims=True))[0])
    first, second = np.array(first), np.array(second)
    distances = ((first[:, None, :] - second[None, :, :]) ** 2).sum(axis=2)
    return float((distances.argmin(axis=1) == np.arange(len(first))).mean())


def real_image_consistency(dataset, clustering, digit) -> tuple[float, float]:
    indices = dataset.digit_indices(digit)
    placed = clustering.place_images(dataset.images[indices])
    writer_cluster = {writer: label for writer, label in zip(clustering.writers, clustering.labels)}
    own = np.array([writer_cluster[dataset.writers[p]] for p in dataset.writer_index[indices]])
    shares = np.bincount(own, minlength=clustering.k) / len(own)
    return float((placed == own).mean()), float((shares ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FEMNIST data folder")
    parser.add_argument("--k", type=int, default=7, help="clusters per digit")
    parser.add_argument("--digits", default="0-9", help="digits to compare, e.g. 0-9 or 0,2")
    args = parser.parse_args()
    if "-" in args.digits:
        low, high = map(int, args.digits.split("-"))
        digits = list(range(low, high + 1))
    else:
        digits = [int(d) for d in args.digits.split(",")]

    dataset = load_dataset(args.data)
    rows = []
    for representation in REPRESENTATIONS:
        for digit in digits:
            started = time.perf_counter()
            clustering = fit_digit_clustering(dataset, digit, args.k, representation)
            retrieval = split_half_retrieval(dataset, clustering, digit)
            consistency, chance = real_image_consistency(dataset, clustering, digit)
            rows.append({
                "representation": representation, "digit": digit, "retrieval": retrieval,
                "consistency": consistency, "chance": chance, "silhouette": clustering.silhouette,
                "largest_cluster_share": max(clustering.cluster_sizes) / len(clustering.writers),
                "seconds": time.perf_counter() - started,
            })
            print(json.dumps(rows[-1]), flush=True)

    print("\nrepresentation  retrieval  consistency  chance  silhouette  largest-share  (means over digits)")
    for representation in REPRESENTATIONS:
        chosen = [row for row in rows if row["representation"] == representation]
        mean = {key: np.mean([row[key] for row in chosen]) for key in chosen[0] if key not in ("representation", "digit")}
        print(f"{representation:14s}  {mean['retrieval']:9.3f}  {mean['consistency']:11.3f}  {mean['chance']:6.3f}"
              f"  {mean['silhouette']:10.3f}  {mean['largest_cluster_share']:13.3f}")


if __name__ == "__main__":
    main()
