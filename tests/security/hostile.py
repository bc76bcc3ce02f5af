"""Functions a hostile job names; if any of them ever runs, it leaves a file behind."""

import os
from pathlib import Path


def touch(*_args, **_kwargs):
    Path(os.environ["HOSTILE_MARKER"]).write_text("ran")
