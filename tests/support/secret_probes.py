"""A callback that holds secrets in its `init_args` (an API key, a webhook URL), as a notifier would."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class SecretHolder(Callback):
    """Records the sha256 of the secrets it was built with (never the secrets): the job must hand it the real ones."""

    def __init__(self, api_key: str, webhook_url: str, out_dir: str) -> None:
        self.api_key, self.webhook_url, self.out_dir = api_key, webhook_url, Path(out_dir)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        digest = {name: hashlib.sha256(getattr(self, name).encode()).hexdigest() for name in ("api_key", "webhook_url")}
        digest["HF_TOKEN"] = hashlib.sha256(os.environ.get("HF_TOKEN", "").encode()).hexdigest()  # set-up ran
        path = self.out_dir / f"{Path(trainer.default_root_dir).name}.json"
        path.write_text(json.dumps(digest))
