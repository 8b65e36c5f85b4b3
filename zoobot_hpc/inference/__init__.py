"""Inference at scale: predictions or embeddings of a finetuned model over every shard of a dataset.

```
request.py   what to compute (InferenceRequest), the checks done before anything runs, the plan every rank follows
parts.py     part files (one per rank per chunk, written atomically), the merge into one HDF5 file, CSV/parquet export
loop.py      the per-rank code path: dataset in manifest order, chunk-aligned batches, Trainer.predict, merge
job.py       the submitit Checkpointable job (local or SLURM) that requeues and skips finished part files
```
"""

from zoobot_hpc.inference.job import InferenceJob, submit_inference
from zoobot_hpc.inference.loop import run_inference
from zoobot_hpc.inference.request import InferenceError, InferencePlan, InferenceRequest, prepare_inference

__all__ = [
    "InferenceError",
    "InferenceJob",
    "InferencePlan",
    "InferenceRequest",
    "prepare_inference",
    "run_inference",
    "submit_inference",
]
