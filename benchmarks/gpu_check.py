"""The GPU check: one markdown table of the figures that need a GPU node (run through `gpu_check.sh`).

On one GPU, convnext_nano at 224 px in bf16, batch 128, 8 loader workers, from demo shards stored at 280 px:
  - training images/s: synthetic tensors already on the device vs the real pipeline (shards -> workers -> device
    augmentation -> step), the latter with and without the worker batch pool (`data.batch_pool`);
  - the train loader alone (uint8 batches into the main process), with and without the batch pool;
  - `predict` images/s (a checkpoint of the same model over every split, part files and merge included);
  - head_only epochs/s with the encoder run every step and with cached embeddings (`data.embedding_cache`).

    python benchmarks/gpu_check.py            # on a GPU node; about 4-6 minutes
    python benchmarks/gpu_check.py --smoke    # anywhere: tiny sizes on the CPU, checks that every step runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_only_cache import fit as fit_epochs
from loader_throughput import shard_loader_rate
from training_throughput import run_pipeline, run_synthetic

from zoobot_hpc.core.config import RunConfig, build_config
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.data.shard_format import read_manifest
from zoobot_hpc.training.embedding_cache import EmbeddingCacheDataModule
from zoobot_hpc.training.run import build_datamodule, build_model, run_training

GPU_SIZES = {"encoder": "convnext_nano", "size": 224, "images": 10000, "batch_size": 128, "workers": 8}
SMOKE_SIZES = {"encoder": "test_convnext", "size": 32, "images": 240, "batch_size": 16, "workers": 2}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script runs)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    args = parser.parse_args()
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    args.__dict__.update(sizes)
    args.device = "cpu" if args.smoke else "cuda"
    args.precision = "32-true" if args.smoke else "bf16-mixed"
    args.warmup = 3 if args.smoke else 10
    args.passes = 2
    args.batch_pool = False
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU node, or pass --smoke")
    return args


def run_config(args: argparse.Namespace, dataset: Path, out: Path, **model: object) -> RunConfig:
    """The benchmark's run: the demo classifier at the benchmark's sizes, one device, no W&B."""
    return build_config(
        {
            "name": "gpu-check",
            "output_dir": str(out),
            "data": {
                "dataset_dir": str(dataset),
                "batch_size": args.batch_size,
                "num_workers": args.workers,
                "augment": {"output_size": args.size, "zoom_range": [1.2, 1.4]},
            },
            "model": {"kind": "classifier", "name": args.encoder, "pretrained": False, "num_classes": 3, **model},
            "trainer": {"max_epochs": 1, "precision": args.precision, "limit_train_batches": 2, "limit_val_batches": 1},
            "resources": {"gpus_per_node": int(args.device == "cuda"), "cpus_per_task": args.workers},
            "tracking": {"mode": "disabled"},
        }
    )


def predict_rate(args: argparse.Namespace, dataset: Path, work: Path) -> tuple[float, bool]:
    """Images/s of `predict` over every split with a checkpoint of the benchmark's model (from a 2-step run),
    and whether it wrote its output."""
    from zoobot_hpc.inference.loop import run_inference
    from zoobot_hpc.inference.request import InferenceRequest, inference_config, prepare_inference

    config = run_config(args, dataset, work / "runs")
    run_dir = work / "runs" / config.name
    run_training(config, run_dir, interactive=False)
    request = InferenceRequest(run_dir / "checkpoints" / "last.ckpt", dataset, work / "predictions.h5")
    inference, trained = inference_config(request, overrides=(f"data.batch_size={2 * args.batch_size}",))
    prepare_inference(request, inference, trained)
    start = time.perf_counter()
    outcome = run_inference(request, inference)
    elapsed = time.perf_counter() - start
    manifest = read_manifest(dataset)
    images = sum(manifest.split_count(split) for split in manifest.splits)
    return images / elapsed, outcome.out is not None and outcome.out.exists()


def head_only_rates(args: argparse.Namespace, dataset: Path, work: Path) -> tuple[float, float]:
    """head_only epochs/s with the encoder every step, and on cached embeddings (2 augmented views)."""
    config = run_config(args, dataset, work / "runs", training_mode="head_only")
    L.seed_everything(0, verbose=False)
    model = build_model(config)
    uncached = fit_epochs(model, build_datamodule(config, model), 3).epochs_per_sec()
    model = build_model(config)
    datamodule = EmbeddingCacheDataModule(
        dataset, model.encoder, args.encoder, batch_size=args.batch_size, label_cols=model.label_cols,
        augment=config.data.augment, views=2, cache_dir=work / "cache",
    )  # fmt: skip
    datamodule.prepare_data()
    cached = fit_epochs(model, datamodule, 12).epochs_per_sec()
    return uncached, cached


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = args.workdir or Path(tmp)
        dataset = work / "shards"
        if not (dataset / "manifest.json").exists():
            write_demo_dataset(dataset, n_galaxies=args.images, image_size=int(args.size * 1.25), seed=0,
                               num_workers=max(args.workers, 1))  # fmt: skip
        batches = max(read_manifest(dataset).split_count("train") // args.batch_size, args.warmup + 5)
        rows = [("training, synthetic tensors on the device", run_synthetic(args, batches), "img/s")]
        rows.append(("training, real pipeline from shards", run_pipeline(args, dataset, batches), "img/s"))
        args.batch_pool = True
        rows.append(("training, real pipeline, `data.batch_pool: true`", run_pipeline(args, dataset, batches), "img/s"))
        args.batch_pool = False
        rows.append(("train loader alone (uint8 batches)", shard_loader_rate(dataset, args, batch_pool=False), "img/s"))
        rows.append(("train loader alone, batch pool", shard_loader_rate(dataset, args, batch_pool=True), "img/s"))
        rate, wrote = predict_rate(args, dataset, work)
        rows.append((f"`predict`, every split, start-up included{'' if wrote else ' (NO OUTPUT)'}", rate, "img/s"))
        uncached, cached = head_only_rates(args, dataset, work)
        rows.append(("head_only, encoder every step", uncached, "epochs/s"))
        rows.append(("head_only, cached embeddings (2 views)", cached, "epochs/s"))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test)"
    seconds = time.perf_counter() - started
    print(f"\n{device}: {args.encoder} at {args.size} px, {args.precision}, batch {args.batch_size}, ", end="")
    print(f"{args.workers} workers, {args.images} demo galaxies; {seconds:.0f} s in all\n")
    print("| figure | value | unit |\n|---|---|---|")
    for name, value, unit in rows:
        print(f"| {name} | {value:.1f} | {unit} |")
    print(f"| pipeline / synthetic | {rows[1][1] / rows[0][1]:.3f} | ratio |")


if __name__ == "__main__":
    main()
