"""Time the engine's main steps on a data folder and print one JSON line per figure.

Usage: python benchmarks/engine_speed.py --data ../shared/femnist [--epochs 5] [--device cpu]

Figures: cold load (parse the sources into an empty cache), warm load (read that cache), clustering
of all ten digits at k=7 (cold: fitted, then warm: read back), and DCGAN training throughput on the
median-sized cluster of digit 3 with the default settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.dataset import load_dataset  # noqa: E402
from engine.dcgan import DCGANConfig  # noqa: E402
from engine.studio import Studio  # noqa: E402


def report(name: str, value: float, unit: str, **details) -> None:
    print(json.dumps({"figure": name, "value": round(value, 3), "unit": unit, **details}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FEMNIST data folder")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the timed training run")
    parser.add_argument("--device", default="cpu", help="torch device for training")
    args = parser.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                      "device": args.device}))

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        dataset = load_dataset(args.data, cache)
        report("load cold", time.perf_counter() - started, "s", images=len(dataset.digits))
        started = time.perf_counter()
        load_dataset(args.data, cache)
        report("load warm", time.perf_counter() - started, "s")

        studio = Studio(args.data, cache, device=args.device)
        started = time.perf_counter()
        studio.all_clusterings(7)
        report("cluster 10 digits cold", time.perf_counter() - started, "s", k=7)
        warm = Studio(args.data, cache, device=args.device)
        started = time.perf_counter()
        warm.all_clusterings(7)
        report("cluster 10 digits warm", time.perf_counter() - started, "s", k=7)

        clustering = studio.clustering(3, 7)
        counts = np.array(clustering.cluster_image_counts)
        cluster = int(np.argsort(counts)[len(counts) // 2])
        config = DCGANConfig(epochs=args.epochs)
        started = time.perf_counter()
        checkpoint = studio.train_model(3, cluster, 7, config)
        elapsed = time.perf_counter() - started
        images_seen = checkpoint.image_count // checkpoint.batch_size * checkpoint.batch_size * checkpoint.epochs_done
        report("train throughput", images_seen / checkpoint.training_seconds, "images/s",
               cluster_images=checkpoint.image_count, batch_size=checkpoint.batch_size)
        report("time per epoch", checkpoint.training_seconds / checkpoint.epochs_done, "s",
               cluster_images=checkpoint.image_count, wall_including_setup=round(elapsed, 1))


if __name__ == "__main__":
    main()
