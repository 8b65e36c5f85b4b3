"""The login-node checks that import torch and timm; `check_cache` runs them in a child process and remembers
their answers, so that `submit` itself stays free of those imports."""

from __future__ import annotations

import re


def encoder_problem(name: str, allow_download: bool) -> tuple[str | None, list[str]]:
    """What is missing of encoder `name`'s pretrained weights (downloaded first when allowed), and the local files
    that make it complete. Imports torch and timm: run by `check_cache` in a child process."""
    from zoobot_hpc.model.encoders import ensure_encoder_weights, required_encoder_files

    try:
        ensure_encoder_weights(name, allow_download=allow_download)
        files = [path for _, path in required_encoder_files(name) if path]
    except (OSError, ValueError, RuntimeError) as exc:
        return f"model.name={name}: {exc}", []
    return None, files


def scheduler_problem(scheduler_kwargs: dict | None) -> str | None:
    """What is wrong with `model.scheduler_kwargs` (timm builds the scheduler against a dummy optimiser, as the
    job will); None when nothing is. Imports torch and timm: run by `check_cache` in a child process."""
    if not scheduler_kwargs:
        return None
    from zoobot_hpc.model.schedulers import validate_scheduler_kwargs

    try:
        validate_scheduler_kwargs(scheduler_kwargs)
    except ValueError as exc:
        return f"model.{exc}"
    return None


def architecture_problem(name: str, timm_kwargs: dict | None, greyscale: bool) -> str | None:
    """What is wrong with `model.timm_kwargs` for encoder `name` (its architecture is built on the meta device,
    without weights: no memory, no download); None when nothing is. Imports torch and timm."""
    if not timm_kwargs:
        return None
    import timm
    import torch

    from zoobot_hpc.model.encoders import encoder_timm_kwargs

    try:
        kwargs = encoder_timm_kwargs(timm_kwargs, greyscale)
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        key = f"model.timm_kwargs.{unexpected.group(1)}" if unexpected else "model.timm_kwargs"
        return f"{key}: not a keyword of encoder {name!r} ({exc})"
    except OSError as exc:
        return f"model.name={name}: cannot read its architecture to check timm_kwargs ({exc})"
    except (ValueError, RuntimeError, AssertionError) as exc:
        return f"model.timm_kwargs={timm_kwargs}: encoder {name!r} rejects them ({exc})"
    return None


def parameter_count(name: str, timm_kwargs: dict | None, greyscale: bool) -> int | None:
    """The parameter count of encoder `name` (built on the meta device: no memory, no download; the head adds
    little); None when its architecture cannot be read here. Imports torch and timm."""
    import timm
    import torch

    from zoobot_hpc.model.encoders import encoder_timm_kwargs

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **encoder_timm_kwargs(timm_kwargs, greyscale))
    except (OSError, ValueError, RuntimeError, TypeError, AssertionError):
        return None
    return sum(parameter.numel() for parameter in model.parameters())
