"""The one rule that tells a local path from a Hugging Face Hub repo id, for every argument that accepts both.

1. `hf-hub:owner/name` is a Hub repo, whatever exists locally (the explicit form, as in open_clip).
2. Otherwise a file or folder that exists is local.
3. Otherwise a `pathlib.Path` is a missing local path, and so is a string that is not a valid repo id
   (`./x`, `/abs/path`, `a/b/c`): both raise `FileNotFoundError` naming the argument.
4. Otherwise the string (`name` or `owner/name`) is a Hub repo id.

This rule names whole repos (models, detectors, feature datasets). A single file inside a repo, such as an answer
list, is written `hf://owner/name/path/in/repo`, the form `huggingface_hub` uses
(see [`lxmert_hf.answers.AnswerVocabulary.load`]).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = ["HUB_PREFIX", "Location", "locate"]

HUB_PREFIX = "hf-hub:"


@dataclasses.dataclass(frozen=True)
class Location:
    """Where something lives: `kind` is `"local"` (then `path` is set) or `"hub"` (then `repo_id` is set)."""

    kind: Literal["local", "hub"]
    path: Path | None = None
    repo_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def name_or_path(self) -> str:
        """What transformers' and huggingface_hub's loaders take: the local path, or the repo id without prefix."""
        return str(self.path) if self.is_local else str(self.repo_id)

    def __str__(self) -> str:
        return str(self.path) if self.is_local else f"{HUB_PREFIX}{self.repo_id}"


def locate(name_or_path: str | os.PathLike, what: str = "path") -> Location:
    """
    Tell whether `name_or_path` is a local file or folder or a Hub repo id, by the rule of this module.

    Args:
        name_or_path (`str` or `os.PathLike`): what the user gave.
        what (`str`, *optional*, defaults to `"path"`): the argument's name, for the error message.

    Raises:
        `TypeError`: neither a string nor a path.
        `FileNotFoundError`: a local path that does not exist (rule 3), `hf-hub:` followed by an invalid id, or
            an empty string (which would otherwise name the current folder).

    Example:
        ```python
        >>> import tempfile
        >>> locate("unc-nlp/lxmert-base-uncased").repo_id
        'unc-nlp/lxmert-base-uncased'
        >>> locate(tempfile.gettempdir()).kind
        'local'
        >>> locate("hf-hub:unc-nlp/frcnn-vg-finetuned").kind
        'hub'
        >>> locate("./no/such/folder", what="--model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: --model: ./no/such/folder does not exist locally and is not a Hub repo id ...
        ```
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"{what} must be a path or a Hub repo id (str), got {type(name_or_path).__name__}.")
    if isinstance(name_or_path, os.PathLike):
        path = Path(name_or_path)
        if path.exists():
            return Location("local", path=path)
        raise _missing(what, path)
    text = str(name_or_path)
    if not text.strip():
        raise FileNotFoundError(f"{what} is empty; give a file or folder, or a Hub repo id ('owner/name').")
    if text.startswith(HUB_PREFIX):
        repo_id = text[len(HUB_PREFIX) :]
        if not _valid_repo_id(repo_id):
            raise FileNotFoundError(
                f"{what}: {repo_id!r} after {HUB_PREFIX!r} is not a Hub repo id; write {HUB_PREFIX}owner/name."
            )
        return Location("hub", repo_id=repo_id)
    path = Path(text).expanduser()
    if path.exists():
        return Location("local", path=path)
    if _valid_repo_id(text):
        return Location("hub", repo_id=text)
    raise _missing(what, text)


def _valid_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return bool(text)


def _missing(what: str, path: str | Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: {path} does not exist locally and is not a Hub repo id ('name', 'owner/name' or "
        f"'{HUB_PREFIX}owner/name'); check the path, or give a repo id."
    )
