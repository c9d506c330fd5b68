"""Entry points. Each one only parses flags, builds objects and runs them."""

import sys
from typing import NoReturn


def not_implemented(command: str, issue: int) -> NoReturn:
    """Exit clearly for a command whose issue has not landed yet.

    The console script exists from the start so packaging, bin/ and the CNI
    config can name it; running it must not pretend to work.
    """
    sys.stderr.write(f"{command}: not implemented yet (tracked in issue {issue})\n")
    sys.exit(2)
