"""Train the DCGAN of every cluster of some digits and report cluster consistency.

Usage: python benchmarks/cluster_consistency.py --data ../shared/femnist --cache /tmp/consistency \
           --digits 0,2 --epochs 100 --batch-size 32 [--n 500]

For each (digit, cluster) it prints the share of `n` generated images that the nearest-centroid rule
places in the model's own cluster, next to the same share for that cluster's real images.
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
    args = parser.parse_args()

    studio = Studio(args.data, args.cache)
    config = DCGANConfig(epochs=args.epochs, batch_size=args.batch_size)
    rows = []
    for digit in [int(d) for d in args.digits.split(",")]:
        clustering = studio.clustering(digit, args.k)
        for cluster in range(clustering.k):
            started = time.perf_counter()
            checkpoint = None if args.retrain else studio.load_model(digit, cluster, args.k)
            if checkpoint is None or checkpoint.config != config:
                checkpoint = studio.train_model(digit, cluster, args.k, config)
            images = generate(checkpoint, args.n, seed=1, device=studio.device)
            report = studio.consistency(clustering, cluster, images)
            rows.append({
                "digit": digit, "cluster": cluster, "images": checkpoint.image_count,
                "generated_in_cluster": round(report.generated_in_cluster, 3),
                "real_in_cluster": round(report.real_in_cluster, 3),
                "seconds": round(time.perf_counter() - started, 1),
            })
            print(json.dumps(rows[-1]), flush=True)

    for digit in sorted({row["digit"] for row in rows}):
        chosen = [row for row in rows if row["digit"] == digit]
        generated = sum(row["generated_in_cluster"] for row in chosen) / len(chosen)
        real = sum(row["real_in_cluster"] for row in chosen) / len(chosen)
        print(f"digit {digit}: mean generated-in-cluster {generated:.3f}, real-in-cluster {real:.3f} over {len(chosen)} clusters")


if __name__ == "__main__":
    main()
