"""`python -m avatar_operator` is the `avatar-operator` command."""

import sys

from avatar_operator import cli

sys.exit(cli.main())
