"""`python -m agent` is `postbox-agent`."""

import sys

from agent.cli import main

sys.exit(main())
