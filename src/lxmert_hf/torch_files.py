"""Reading `torch.save` files safely: `weights_only=True` always, and its refusals said as one line that names the
file and the fix, instead of torch's multi-paragraph message."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = ["load_torch_file"]


def load_torch_file(path: str | os.PathLike, expected: str = "a PyTorch state dict", **kwargs) -> object:
    """
    `torch.load(path, map_location="cpu", weights_only=True, **kwargs)`, refusing with a `ValueError` naming `path`
    and the fix a file that is no `torch.save` output, or one holding Python objects besides tensors (which
    `weights_only` loading does not run); a missing file is a `FileNotFoundError`.

    Example:
        ```python
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "state.pth")
        >>> torch.save({"weight": torch.ones(2)}, path)
        >>> load_torch_file(path)["weight"].tolist()
        [1.0, 1.0]
        >>> _ = open(path, "w").write("not a checkpoint")
        >>> load_torch_file(path)
        Traceback (most recent call last):
        ...
        ValueError: ...state.pth is not a PyTorch file (torch.save output); expected a PyTorch state dict.
        ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is no file); expected {expected}.")
    with open(path, "rb") as handle:
        first = handle.read(1)
    if not (zipfile.is_zipfile(path) or first == b"\x80"):  # torch.save's zip archive, or its legacy pickle
        raise ValueError(f"{path} is not a PyTorch file (torch.save output); expected {expected}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise ValueError(
            f"{path} holds Python objects besides tensors{f' ({found.group(1)})' if found else ''}, which are not "
            "loaded (files are read with weights_only=True, so that no code in them runs); save the state dict "
            "alone (torch.save(model.state_dict(), path)) and pass that."
        ) from None
    except (RuntimeError, OSError, EOFError) as error:  # a truncated or garbled archive
        raise ValueError(f"cannot read {path} as {expected} ({error}); download or save it again.") from None
