"""Distil a draft for the default target: a thin wrapper over ``lookahead distill``.

The shipped draft (lookahead/models/smollm2-135m-gsm8k-draft) was made with the command recorded
in its README.md; rerun it from the repository root to reproduce it, e.g.::

    .venv/bin/python scripts/distill.py --out runs/distill --limit 1200
"""

from __future__ import annotations

import sys

from lookahead.cli import app

if __name__ == "__main__":
    sys.exit(app(["distill", *sys.argv[1:]], prog_name="lookahead"))
