"""One training run: trainer, checkpointing, callbacks, W&B logger, embedding cache, the training job."""
