"""`python -m avatar_runner`: see avatar_runner.main."""

from .exits import exit_now
from .main import main

exit_now(main())
