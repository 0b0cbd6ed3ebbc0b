"""`python -m bake_lab`: the `bake-lab` command (cli.py)."""
import sys

from .cli import main

sys.exit(main())
