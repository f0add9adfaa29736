"""``python -m syncer``."""

from syncer.cli import main_entry

main_entry()
