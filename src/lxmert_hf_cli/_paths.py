"""Checks of output paths that need no library import, so that a typo costs no model loading or evaluation."""

from __future__ import annotations

from pathlib import Path


def check_output_file(output: Path, what: str = "--output") -> None:
    """
    Refuse an output file that cannot be written where it is: inside a file, in a folder that does not exist, or a
    folder itself. Raises a `ValueError` naming `what` and the fix.

    Example:
        ```python
        >>> import tempfile
        >>> from pathlib import Path
        >>> check_output_file(Path(tempfile.mkdtemp()) / "metrics.json")
        >>> check_output_file(Path(tempfile.mkdtemp()))
        Traceback (most recent call last):
        ...
        ValueError: --output /tmp/... is a folder; give the path of the file to write.
        ```
    """
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_file():
        raise ValueError(f"{what} {output}: {parent} is a file, not a folder; choose another path.")
    if not output.parent.is_dir():
        raise ValueError(f"{what} {output}: the folder {output.parent} does not exist; create it first.")
    if output.is_dir():
        raise ValueError(f"{what} {output} is a folder; give the path of the file to write.")
