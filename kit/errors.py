"""The one exception type that means "the user's input is wrong" (exit code 2, one line), and the
one line that describes any error."""


# torch re-raises a DataLoader worker's error in the main process with the worker's traceback
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class KitError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


def examples(ids, shown=3, sort=True) -> str:
    """A few of `ids` for a message: the first `shown` (in sorted order, or as given), then ...
    when there are more."""
    ids = sorted(map(str, ids)) if sort else list(map(str, ids))
    return ", ".join(ids[:shown]) + (" ..." if len(ids) > shown else "")


def describe(e: Exception) -> str:
    """One line for an error: a KitError says problem and fix; an OSError is the machine's
    (permissions, a full disk, a vanished mount): its path; anything else, its type and first line.
    A data-loading worker's error is its own last line."""
    if WORKER_TRACEBACK in str(e):
        raised = str(e).strip().splitlines()[-1].partition(": ")[2]  # "kit.errors.KitError: ..."
        return raised if isinstance(e, KitError) else f"{type(e).__name__} in a data-loading worker: {raised[:300]}"
    if isinstance(e, KitError):
        return str(e)
    if not isinstance(e, OSError):
        first = next((line for line in str(e).splitlines() if line.strip()), "")[:300]
        return f"{type(e).__name__}: {first}"
    where = f": {e.filename}" if e.filename else ""
    return (f"{e.strerror or e}{where}; check that path's permissions and the free disk space, then "
            f"rerun (finished work is kept)")
