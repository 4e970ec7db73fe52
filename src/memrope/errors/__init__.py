"""Errors the command line turns into one-line messages and exit statuses, without tracebacks.

Exit statuses of every ``memrope`` command (the README lists the same):

- 0: done (also: a run directory that is already complete);
- 2: a user error: a bad option, value, path or input file; one line on stderr, and nothing was
  created or changed (all checks run before the first file is written);
- 3: the run could not go on: non-finite latents (the last good state is kept);
- 4: the disk filled up while writing (the last good state is kept; free space, then ``--resume``);
- 130: interrupted (SIGINT / SIGTERM): the current chunk was finished and saved.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_RUN_FAILURE = 3
EXIT_DISK_FULL = 4
EXIT_INTERRUPTED = 130
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """A problem with the user's input or files: exit status 2, nothing written."""


class RunFailure(Exception):
    """The run could not go on (non-finite latents): exit status 3, last good state kept."""

    status = EXIT_RUN_FAILURE


class DiskFull(RunFailure):
    """No space left while writing: exit status 4, last good state kept."""

    status = EXIT_DISK_FULL


def guarded(call: Callable[[], int], prog: str = "memrope") -> int:
    """Run a command and turn its expected failures into one line on stderr and an exit status.

    Every entry point (``memrope``, ``python -m memrope.bench``, ``torchrun -m memrope.distributed``)
    goes through here, so no documented failure ends in a traceback.
    """
    try:
        return call()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailure as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.status
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        print(f"{prog}: error: disk full while writing ({e.strerror}: {e.filename}); free space and run "
              f"the command again", file=sys.stderr)
        return EXIT_DISK_FULL
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
