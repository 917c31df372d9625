"""``python -m engine`` runs the ``alarmrelay`` CLI."""

import sys

from engine.cli import main

sys.exit(main())
