"""Train the DCGAN of every cluster of some digits and report cluster consistency.

Usage: python benchmarks/cluster_consistency.py --data ../shared/femnist --cache /tmp/consistency \
           --digits 0,2 --epochs 100 --batch-size 32 [--n 500]

For each (digit, cluster) it prints the share of `n` generated images that the nearest-centroid rule
places in the model's own cluster, for each noise truncation in --truncations ("none" is the plain
normal), next to the same share for that cluster's real images, and the same two shares for random
sets of images placed as a writer is (the set figures use the last truncation listed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.dcgan import DCGANConfig, generate  # noqa: E402
from engine.studio import Studio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FEMNIST data folder")
    parser.add_argument("--cache", required=True, help="cache folder for clusterings and models")
    parser.add_argument("--digits", default="0,2", help="comma-separated digits")
    parser.add_argument("--k", type=int, default=7, help="clusters per digit")
    parser.add_argument("--epochs", type=int, default=DCGANConfig.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=DCGANConfig.batch_size, help="images per step")
    parser.add_argument("--n", type=int, default=500, help="generated images per model")
    parser.add_argument("--retrain", action="store_true", help="train even when a model is saved")
    parser.add_argument("--truncations", default="1.5,1.0,0.75,none", help="comma-separated noise truncations to compare")
    args = parser.parse_args()

    studio = Studio(args.data, args.cache)
    config = DCGANConfig(epochs=args.epochs, batch_size=args.batch_size)
    truncations = [None if item == "none" else float(item) for item in args.truncations.split(",")]
    rows = []
    for digit in [int(d) for d in args.digits.split(",")]:
        clustering = studio.clustering(digit, args.k)
        for cluster in range(clustering.k):
            started = time.perf_counter()
            checkpoint = None if args.retrain else studio.load_model(digit, cluster, args.k)
            if checkpoint is None or checkpoint.config != config or not checkpoint.completed:
                checkpoint = studio.train_model(digit, cluster, args.k, config)
            row = {"digit": digit, "cluster": cluster, "images": checkpoint.image_count}
            for truncation in truncations:
                images = generate(checkpoint, args.n, seed=1, device=studio.device, truncation=truncation)
                report = studio.consistency(clustering, cluster, images)
                row[f"generated_in_cluster@{truncation}"] = round(report.generated_in_cluster, 3)
            row["real_in_cluster"] = round(report.real_in_cluster, 3)
            row["set_size"] = report.set_size
            row["generated_sets_in_cluster"] = round(report.generated_sets_in_cluster, 3)
            row["real_sets_in_cluster"] = round(report.real_sets_in_cluster, 3)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)

    for digit in sorted({row["digit"] for row in rows}):
        chosen = [row for row in rows if row["digit"] == digit]
        real = sum(row["real_in_cluster"] for row in chosen) / len(chosen)
        generated = {
            truncation: sum(row[f"generated_in_cluster@{truncation}"] for row in chosen) / len(chosen)
            for truncation in truncations
        }
        shares = ", ".join(f"truncation {t}: {share:.3f}" for t, share in generated.items())
        print(f"digit {digit} over {len(chosen)} clusters: real {real:.3f}; generated {shares}")
        generated_sets = sum(row["generated_sets_in_cluster"] for row in chosen) / len(chosen)
        real_sets = sum(row["real_sets_in_cluster"] for row in chosen) / len(chosen)
        print(f"digit {digit} sets of {chosen[0]['set_size']}: real {real_sets:.3f}; generated {generated_sets:.3f} (last truncation)")


if __name__ == "__main__":
    main()
