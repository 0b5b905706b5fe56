"""Command-line interface: `python -m engine COMMAND --help`.

Results go to stdout (as JSON with --json), logs and progress bars to stderr. Exit status is 0 on
success and 2 on bad input, with one line on stderr that names the value and the fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from engine.clustering import DEFAULT_K, MAX_K, MIN_K
from engine.dataset import DIGITS
from engine.dcgan import DCGANConfig, EpochProgress
from engine.errors import InputError
from engine.quality import ClassifierConfig
from engine.settings import CACHE_ENV_VAR, DATA_ENV_VAR, DEVICE_ENV_VAR
from engine.style import DEFAULT_REPRESENTATION, REPRESENTATIONS

logger = logging.getLogger("engine.cli")

EXIT_OK = 0
EXIT_INPUT_ERROR = 2
INLINE_LIST_LIMIT = 10  # items of a list shown on one line of the human-readable output


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.handler(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is not None:
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print(format_result(result))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per task."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", help=f"FEMNIST data folder (*_train.h5/*_test.h5 or LEAF *.json); default ${DATA_ENV_VAR}")
    common.add_argument("--cache", help=f"folder for everything the engine computes; default ${CACHE_ENV_VAR} or ./cache")
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level on stderr")

    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--k", type=int, default=DEFAULT_K, help=f"clusters per digit, {MIN_K}-{MAX_K} (default {DEFAULT_K})")
    method.add_argument("--representation", default=DEFAULT_REPRESENTATION, choices=REPRESENTATIONS, help="style vector used for clustering (default %(default)s)")
    method.add_argument("--device", help=f"torch device: auto, cpu, cuda or cuda:N; default ${DEVICE_ENV_VAR} or auto (CUDA when present)")

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--epochs", type=int, help=f"training epochs, passes over the cluster's images (default {DCGANConfig.epochs})")
    training.add_argument("--batch-size", type=int, help=f"images per optimiser step (default {DCGANConfig.batch_size})")
    training.add_argument("--seed", type=int, default=0, help="random seed for training and generation (default %(default)s)")

    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Personalized Digit Studio engine: fill FEMNIST writer x digit cells with generated handwriting.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="count writers, images and empty cells of the data")
    info.set_defaults(handler=command_info)

    cluster = commands.add_parser("cluster", parents=[common, method], help="cluster the writers of one or all digits by style")
    cluster.add_argument("--digit", type=int, help="digit 0-9; all ten when omitted")
    cluster.add_argument("--umap", action="store_true", help="also compute and cache the 2-D UMAP coordinates the app shows")
    cluster.set_defaults(handler=command_cluster)

    train = commands.add_parser("train", parents=[common, method, training], help="train the DCGAN of one (digit, cluster)")
    train.add_argument("--digit", type=int, required=True, help="digit 0-9")
    group = train.add_mutually_exclusive_group(required=True)
    group.add_argument("--cluster", type=int, help="cluster index 0..k-1")
    group.add_argument("--all-clusters", action="store_true", help="train one model per cluster of the digit")
    train.set_defaults(handler=command_train)

    fill = commands.add_parser("fill", parents=[common, method, training], help="generate images for a (writer, digit) cell")
    fill.add_argument("--writer", required=True, help="writer id, e.g. f0424_27")
    fill.add_argument("--digit", type=int, required=True, help="digit 0-9")
    fill.add_argument("--n", type=int, default=64, help="images to generate (default %(default)s)")
    fill.add_argument("--out", type=Path, help="write a PNG grid of the generated images here")
    fill.add_argument("--hide", action="store_true", help="leave the writer's own images of the digit out of everything the method sees")
    fill.add_argument("--no-train", action="store_true", help="fail instead of training a missing model")
    fill.add_argument("--truncation", type=float, help="draw generator noise from a normal truncated to [-T, T]; smaller T gives more typical images (default: no truncation)")
    fill.set_defaults(handler=command_fill)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common, method],
        help="measure generated handwriting: one model, all models of a digit, or the held-out-cell study",
        description=(
            "With --digit and --cluster, measure one saved model; with --digit alone, every saved model "
            "of the digit; with --cells, hide that many real cells and compare cluster-GAN-cluster with "
            "three baselines on them (trains the models it needs)."
        ),
    )
    evaluate.add_argument("--digit", type=int, help="digit 0-9; with --cells, hide cells of this digit only")
    evaluate.add_argument("--cluster", type=int, help="cluster index 0..k-1 of the model to measure (needs --digit)")
    evaluate.add_argument("--cells", type=int, help="run the held-out study with this many hidden cells, one per writer")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the hidden-cell sample and the random other clusters (default %(default)s)")
    evaluate.add_argument("--epochs", type=int, help=f"training epochs of the study's cluster models (default {DCGANConfig.epochs})")
    evaluate.add_argument("--batch-size", type=int, help=f"images per optimiser step of the study's models (default {DCGANConfig.batch_size})")
    evaluate.add_argument(
        "--all-writers-epochs", type=int,
        help="epochs of the study's all-writers model (default: as many optimiser steps as the digit's median cluster model)",
    )
    evaluate.add_argument("--n", type=int, default=500, help="images generated per model (default %(default)s)")
    evaluate.add_argument("--classifier-epochs", type=int, default=ClassifierConfig.epochs, help="epochs of the feature classifier, trained once per dataset and setting (default %(default)s)")
    evaluate.add_argument("--classifier-images", type=int, help="train the feature classifier on a random subset of this many train images (default: all)")
    evaluate.add_argument("--out", type=Path, help="result JSON file (default: under <cache>/quality/)")
    evaluate.set_defaults(handler=command_evaluate)

    models = commands.add_parser("models", parents=[common, method], help="list trained models with their settings")
    models.set_defaults(handler=command_models)

    download = commands.add_parser("download", parents=[common], help="download and unpack the full digits-only FEMNIST release")
    download.add_argument("--dest", type=Path, required=True, help="folder to download and unpack into")
    download.add_argument("--url", help="archive URL (default: TensorFlow Federated's release, or $FEMNIST_DOWNLOAD_URL)")
    download.add_argument("--sha256", help="expected SHA-256 of the archive (default: the release's, or $FEMNIST_DOWNLOAD_SHA256)")
    download.set_defaults(handler=command_download)

    worker = commands.add_parser("worker", parents=[common, method], help="run queued background jobs (the app starts one when needed)")
    worker.add_argument("--poll", type=float, default=1.0, help="seconds between checks for new jobs (default %(default)s)")
    worker.add_argument("--idle-exit", type=float, help="exit after this many idle seconds (default: run until stopped)")
    worker.set_defaults(handler=command_worker)
    return parser


def make_studio(args: argparse.Namespace):
    """Build the Studio the command works on."""
    from engine.studio import Studio

    return Studio(
        args.data,
        args.cache,
        device=getattr(args, "device", None),
        representation=getattr(args, "representation", DEFAULT_REPRESENTATION),
    )


def training_config(args: argparse.Namespace, required: bool = True) -> DCGANConfig | None:
    """Return the DCGAN settings chosen on the command line.

    With `required` False and neither --epochs nor --batch-size given, return None: a saved model
    is then used whatever its settings.
    """
    if not required and args.epochs is None and args.batch_size is None:
        return None
    epochs = DCGANConfig.epochs if args.epochs is None else args.epochs
    batch_size = DCGANConfig.batch_size if args.batch_size is None else args.batch_size
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise InputError(f"--batch-size must be at least 2, got {batch_size}")
    return DCGANConfig(epochs=epochs, batch_size=batch_size, seed=args.seed)


class EpochBar:
    """A tqdm progress bar over training epochs, fed by `train_dcgan`'s `on_epoch` callback."""

    def __init__(self, label: str):
        self.label = label
        self.bar: tqdm | None = None

    def __call__(self, progress: EpochProgress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=progress.epochs, desc=self.label, unit="epoch", file=sys.stderr)
        self.bar.update(1)
        self.bar.set_postfix(
            g_loss=f"{progress.generator_loss:.3f}",
            d_loss=f"{progress.discriminator_loss:.3f}",
            img_per_s=f"{progress.images_per_second:.0f}",
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def command_info(args: argparse.Namespace) -> dict:
    studio = make_studio(args)
    return studio.dataset.summary()


def command_cluster(args: argparse.Namespace) -> dict:
    studio = make_studio(args)
    digits = list(DIGITS) if args.digit is None else [args.digit]
    results = []
    for digit in digits:
        clustering = studio.clustering(digit, args.k)
        summary = clustering.summary()
        summary["cache"] = str(studio.clustering_path(digit, args.k))
        if args.umap:
            studio.umap(digit, args.k)
            summary["umap"] = "cached"
        results.append(summary)
    return {"clusterings": results}


def command_train(args: argparse.Namespace) -> dict:
    studio = make_studio(args)
    config = training_config(args)
    clustering = studio.clustering(args.digit, args.k)
    clusters = range(clustering.k) if args.all_clusters else [clustering.validate_cluster(args.cluster)]
    trained = []
    for cluster in clusters:
        bar = EpochBar(f"digit {args.digit} cluster {cluster}")
        try:
            checkpoint = studio.train_model(args.digit, cluster, args.k, config, on_epoch=bar)
        finally:
            bar.close()
        trained.append({
            "digit": args.digit,
            "cluster": cluster,
            "images": checkpoint.image_count,
            "epochs": checkpoint.epochs_done,
            "seconds": round(checkpoint.training_seconds, 1),
            "final_generator_loss": round(checkpoint.history.epoch_generator_losses[-1], 4),
            "final_discriminator_loss": round(checkpoint.history.epoch_discriminator_losses[-1], 4),
            "checkpoint": str(studio.model_path(args.digit, cluster, args.k)),
        })
    return {"models": trained}


def command_fill(args: argparse.Namespace) -> dict:
    from engine.images import make_grid

    studio = make_studio(args)
    config = training_config(args, required=False)
    bar = EpochBar(f"training digit {args.digit} model")
    try:
        result = studio.fill(
            args.writer, args.digit, n=args.n, k=args.k, hide=args.hide, config=config,
            seed=args.seed, train_if_missing=not args.no_train, on_epoch=bar, truncation=args.truncation,
        )
    finally:
        bar.close()
    output = result.to_dict()
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            make_grid(result.images, scale=2).save(args.out)
        except OSError as error:
            raise InputError(f"cannot write {str(args.out)!r}: {error.strerror}; choose another --out") from None
        output["png"] = str(args.out)
    return output


def command_evaluate(args: argparse.Namespace) -> dict | None:
    from engine import evaluation
    from engine.quality import load_or_train_classifier

    studio = make_studio(args)
    classifier_config = ClassifierConfig(epochs=args.classifier_epochs, max_train_images=args.classifier_images)
    if args.n < 2:
        raise InputError(f"--n must be at least 2 generated images, got {args.n}")

    if args.cells is not None:
        if args.cluster is not None:
            raise InputError("--cluster does not apply to the held-out study (--cells); leave it out")
        settings = evaluation.StudySettings(
            cells=args.cells,
            seed=args.seed,
            k=args.k,
            config=training_config(args),
            all_writers_epochs=args.all_writers_epochs,
            classifier=classifier_config,
            generated_per_model=args.n,
            digits=tuple(DIGITS) if args.digit is None else (args.digit,),
        )
        path = args.out or evaluation.results_folder(studio) / settings.file_name(studio.representation)
        bars = StudyBars()
        try:
            result = evaluation.run_held_out_study(studio, settings, path, on_epoch=bars)
        finally:
            bars.close()
        result["result_file"] = str(path)
        if args.json:
            return evaluation.without_private_keys(result)
        print(format_study_table(result))
        return None

    if args.digit is None:
        raise InputError("give --digit (and optionally --cluster) to measure models, or --cells N for the held-out study")
    clustering = studio.clustering(args.digit, args.k)
    if args.cluster is not None:
        clusters = [clustering.validate_cluster(args.cluster)]
    else:
        clusters = [cluster for cluster in range(clustering.k) if studio.model_path(args.digit, cluster, args.k).is_file()]
        if not clusters:
            raise InputError(
                f"no saved model of digit {args.digit} at k={clustering.k}; train them with "
                f"`python -m engine train --digit {args.digit} --all-clusters --k {clustering.k}`"
            )
    classifier = load_or_train_classifier(studio.dataset, studio.cache_dir, classifier_config)
    rows = [
        evaluation.evaluate_model(studio, classifier, args.digit, cluster, args.k, generated_count=args.n).to_dict()
        for cluster in clusters
    ]
    path = args.out or evaluation.model_results_path(studio, clustering.k)
    evaluation.record_model_results(path, rows, classifier)
    result = {"models": rows, "classifier": classifier.summary(), "result_file": str(path)}
    if args.json:
        return result
    print(format_model_table(result))
    return None


class StudyBars:
    """One tqdm epoch bar per model the held-out study trains, closed when the next model starts."""

    def __init__(self):
        self.label: str | None = None
        self.bar: EpochBar | None = None

    def __call__(self, label: str, progress: EpochProgress) -> None:
        if label != self.label:
            self.close()
            self.label, self.bar = label, EpochBar(label)
        self.bar(progress)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.label, self.bar = None, None


MODEL_COLUMNS = (
    ("digit", "digit", "{}"),
    ("cluster", "cluster", "{}"),
    ("images", "training_images", "{}"),
    ("recog gen", "recognisability_generated", "{:.3f}"),
    ("recog real", "recognisability_real", "{:.3f}"),
    ("FD gen", "frechet_generated", "{:.2f}"),
    ("FD real/2", "frechet_real_halves", "{:.2f}"),
    ("consist gen", "consistency_generated", "{:.3f}"),
    ("consist real", "consistency_real", "{:.3f}"),
    ("sets gen", "consistency_sets_generated", "{:.3f}"),
    ("sets real", "consistency_sets_real", "{:.3f}"),
    ("divers gen", "diversity_generated", "{:.2f}"),
    ("divers real", "diversity_real", "{:.2f}"),
)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Render rows of strings as right-aligned columns under a header line."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header) for i, header in enumerate(headers)]
    lines = ["  ".join(header.rjust(width) for header, width in zip(headers, widths))]
    lines.extend("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)
    return "\n".join(lines)


def format_model_table(result: dict) -> str:
    """Render per-model metrics as a table with the classifier's accuracy and the result file."""
    rows = [[_format_number(pattern, row.get(key)) for _, key, pattern in MODEL_COLUMNS] for row in result["models"]]
    classifier = result["classifier"]
    return "\n".join([
        format_table([header for header, _, _ in MODEL_COLUMNS], rows),
        f"feature classifier: test accuracy {classifier['test_accuracy']:.4f} on {classifier['test_images']} images",
        f"FD gen compares {result['models'][0]['half_size']} generated images with half of the real ones; "
        "FD real/2 compares the two halves (the sample-noise floor)" if result["models"] else "",
        f"saved to {result['result_file']}",
    ])


def format_study_table(result: dict) -> str:
    """Render the held-out study: one row per method with mean, spread and ratio to cluster-GAN-cluster."""
    from engine.evaluation import METHOD_LABELS, METHODS, OURS

    summary = result["summary"]
    lines = [
        f"held-out cells: {summary['cells']}, with all four methods: {summary['paired_cells']}; "
        f"digits done {result['digits_done']}; {result.get('elapsed_seconds', 0):.0f} s",
    ]
    if not summary["metrics"]:
        return "\n".join([*lines, "no cell has a value for every method", f"saved to {result['result_file']}"])
    headers = ["method", "energy mean", "± sem", "ratio", "ours closer", "cross mean", "± sem", "ratio", "pooled FD"]
    pooled = summary.get("pooled_frechet_distance") or {}
    rows = []
    for method in METHODS:
        energy = summary["metrics"]["energy_distance"][method]
        cross = summary["metrics"]["cross_distance"][method]
        rows.append([
            METHOD_LABELS[method],
            f"{energy['mean']:.3f}",
            _format_number("{:.3f}", energy["sem"]),
            "1" if method == OURS else _format_number("{:.2f}", summary["ratios"]["energy_distance"][method]),
            "" if method == OURS else f"{summary['ours_closer_share']['energy_distance'][method]:.0%}",
            f"{cross['mean']:.3f}",
            _format_number("{:.3f}", cross["sem"]),
            "1" if method == OURS else _format_number("{:.2f}", summary["ratios"]["cross_distance"][method]),
            _format_number("{:.2f}", pooled.get(method)),
        ])
    lines.append(format_table(headers, rows))
    lines.append(
        "energy and cross: feature distances to each hidden cell's real images, mean over cells; "
        "ratio: method mean / cluster-GAN-cluster mean; ours closer: share of cells where "
        "cluster-GAN-cluster has the smaller energy distance"
    )
    lines.append(f"feature classifier: test accuracy {result['classifier']['test_accuracy']:.4f}")
    lines.append(f"saved to {result['result_file']}")
    return "\n".join(lines)


def _format_number(pattern: str, value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return pattern.format(value)


def command_models(args: argparse.Namespace) -> dict:
    studio = make_studio(args)
    return {"models": studio.list_models(args.k)}


def command_download(args: argparse.Namespace) -> dict:
    from engine.download import download_release

    bar: tqdm | None = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc="download", file=sys.stderr)
        else:
            bar.update(done - bar.n)

    try:
        folder = download_release(args.dest, url=args.url, sha256=args.sha256, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    return {"data": str(folder), "hint": f"use --data {folder} or set {DATA_ENV_VAR}={folder}"}


def command_worker(args: argparse.Namespace) -> None:
    from engine.tasks import run_studio_worker

    studio = make_studio(args)
    run_studio_worker(studio, poll_seconds=args.poll, idle_exit_seconds=args.idle_exit)
    return None


def format_result(result: dict) -> str:
    """Render a result for people: the JSON form without braces and quotes."""
    lines: list[str] = []
    _format_value(result, 0, lines)
    return "\n".join(lines)


def _format_value(value, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item and not _is_flat_list(item):
                lines.append(f"{pad}{key}:")
                _format_value(item, indent + 1, lines)
            else:
                lines.append(f"{pad}{key}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                lines.append(f"{pad}-")
                _format_value(item, indent + 1, lines)
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(f"{pad}{_inline(value)}")


def _is_flat_list(value) -> bool:
    return isinstance(value, list) and all(not isinstance(item, (dict, list)) for item in value)


def _inline(value) -> str:
    if isinstance(value, list):
        if not value:
            return "(none)"
        shown = ", ".join(str(item) for item in value[:INLINE_LIST_LIMIT])
        if len(value) > INLINE_LIST_LIMIT:
            shown += f", ... ({len(value)} in all; --json lists every one)"
        return shown
    if isinstance(value, dict):
        return "(none)"
    return str(value)
