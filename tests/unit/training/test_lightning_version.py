"""The installed Lightning is a minor version the exact-resume code was tested on."""

from __future__ import annotations

import lightning

from zoobot_hpc.training.checkpointing import LIGHTNING_INTERNALS_USED, TESTED_LIGHTNING_MINORS


def test_installed_lightning_is_a_minor_version_the_resume_code_was_tested_on():
    minor = ".".join(lightning.__version__.split(".")[:2])
    internals = "\n  ".join(LIGHTNING_INTERNALS_USED)
    assert minor in TESTED_LIGHTNING_MINORS, (
        f"lightning {lightning.__version__} is not a tested minor {TESTED_LIGHTNING_MINORS}: before adding it to "
        f"TESTED_LIGHTNING_MINORS and pyproject.toml, re-check these internals and run the resume tests "
        f"(tests/cluster/test_slurm_preemption.py, test_validation_stop.py, test_train_command.py):\n  {internals}"
    )
