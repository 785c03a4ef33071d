"""`python -m conveyor_runtime.cli`: the same as the `conveyor` command (used to start local step replicas)."""

import sys

from .main import main

sys.exit(main())
