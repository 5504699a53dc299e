"""The one rule that tells a local path from a Hugging Face Hub repo id, for every argument that accepts both.

1. `hf-hub:owner/name` is a Hub repo, whatever exists locally (the explicit form, as in open_clip).
2. Otherwise a file or folder that exists is local.
3. Otherwise a `pathlib.Path` is a missing local path, and so is a string that is not a valid repo id
   (`./x`, `/abs/path`, `a/b/c`), or an `owner/name` whose `owner` is a local folder (`data/features` beside a
   `data` folder): all raise `FileNotFoundError` naming the argument (`hf-hub:owner/name` still names the Hub).
4. Otherwise the string (`name` or `owner/name`) is a Hub repo id.

This rule names whole repos (models, detectors, feature datasets). A single file inside a repo, such as an answer
list, is written `hf://owner/name/path/in/repo`, the form `huggingface_hub` uses
(see [`lxmert_hf.answers.AnswerVocabulary.load`]).

Reaching the Hub is also done here, once for every loader ([`hub_file`], [`first_hub_file`], [`reaching_hub`]):
`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is honoured at once, files already in the Hub cache load without the
network, and a Hub that cannot be reached is reported as such ([`HubUnavailableError`]), never as a repo that lacks
the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = [
    "HUB_PREFIX",
    "HubUnavailableError",
    "Location",
    "cache_first_file",
    "first_hub_file",
    "hub_file",
    "hub_offline",
    "locate",
    "reaching_hub",
]

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
    if not _valid_repo_id(text):
        raise _missing(what, text)
    if _under_local_folder(path):
        raise FileNotFoundError(
            f"{what}: {text} does not exist locally (its folder {path.parent} does); check the path, or write "
            f"{HUB_PREFIX}{text} for the Hub repo."
        )
    return Location("hub", repo_id=text)


def _under_local_folder(path: Path) -> bool:
    # `owner/name` where `owner` is a folder here is a mistyped path far more often than a Hub repo.
    return len(path.parts) > 1 and path.parent.is_dir()


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


# -- reaching the Hub ---------------------------------------------------------------------------------------------
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# What huggingface_hub raises when it is off or could not reach the Hub, and what the HTTP clients raise when the
# Hub is out of reach (huggingface_hub's client, whichever of httpx2/httpx its version uses, and `requests`).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError,
)  # fmt: skip
for _client, _names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                        ("requests", ("ConnectionError", "Timeout"))):  # fmt: skip
    with contextlib.suppress(ImportError):
        _module = importlib.import_module(_client)
        NETWORK_ERRORS += tuple(getattr(_module, name) for name in _names)


class HubUnavailableError(FileNotFoundError):
    """Files of a Hub repo that are neither in the Hub cache nor downloadable now: Hub access is off
    (`HF_HUB_OFFLINE`), or the Hub cannot be reached. It is a `FileNotFoundError` (as huggingface_hub's
    `LocalEntryNotFoundError`): what is missing is the local copy, and the repo may well hold the files."""


def hub_offline() -> bool:
    """Whether Hub access is off: `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` set, read now from the environment and
    from `huggingface_hub.constants` (which reads them when it is imported).

    Example:
        ```python
        >>> import os
        >>> os.environ["HF_HUB_OFFLINE"] = "1"
        >>> hub_offline()
        True
        >>> del os.environ["HF_HUB_OFFLINE"]
        ```
    """
    variables = (os.environ.get(name, "").strip().upper() for name in OFFLINE_VARIABLES)
    return bool(constants.is_offline_mode()) or any(value in constants.ENV_VARS_TRUE_VALUES for value in variables)


def offline_kwargs(hub_kwargs: dict) -> dict:
    """`hub_kwargs` with `local_files_only=True` while Hub access is off, so that no request is even tried."""
    return {**hub_kwargs, "local_files_only": True} if hub_offline() else dict(hub_kwargs)


def hub_file(repo_id: str, filename: str, what: str, **hub_kwargs) -> str | None:
    """
    The local path of `filename` of a Hub repo: from the Hub cache, else downloaded into it.

    Args:
        repo_id (`str`): the repo, `owner/name`.
        filename (`str`): the file's path in the repo.
        what (`str`): what the repo is for the user (`"model"`, `"detector"`, `"--tokenizer_name"`), for messages.
        hub_kwargs: passed to `huggingface_hub.hf_hub_download` (`revision`, `cache_dir`, `token`, `repo_type`,
            `local_files_only`, ...).

    Returns:
        `str` or `None`: the path, or `None` when the Hub answers that the repo has no such file.

    Raises:
        [`HubUnavailableError`]: the file is not in the cache and Hub access is off, or the Hub cannot be reached.
        `FileNotFoundError`: the repo or revision does not exist (or is private and no token was given).

    Example:
        ```python
        >>> from lxmert_hf.locations import hub_file
        >>> hub_file("unc-nlp/lxmert-base-uncased", "config.json", "model")  # doctest: +SKIP
        '/home/me/.cache/huggingface/hub/models--unc-nlp--lxmert-base-uncased/snapshots/.../config.json'
        ```
    """
    hub_kwargs = offline_kwargs(hub_kwargs)
    with reaching_hub(repo_id, what, filename, local_files_only=hub_kwargs.get("local_files_only", False)):
        try:
            return huggingface_hub.hf_hub_download(repo_id, filename, **hub_kwargs)
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise FileNotFoundError(
                f"{what}: {repo_id!r} is neither an existing folder nor a reachable Hub repo (or revision): "
                f"{_first_line(error)}. Check the name, or log in (`hf auth login`) for a private repo."
            ) from None
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):
                raise
            return None


def first_hub_file(repo_id: str, filenames: Sequence[str], what: str, **hub_kwargs) -> tuple[str, str] | None:
    """`(filename, path)` of the first of `filenames` the repo holds (see [`hub_file`]), or `None` when it holds
    none of them. Offline, a file missing from the cache may be in the repo: the next one is tried, and when none is
    cached the [`HubUnavailableError`] is raised. Online, a Hub that cannot be reached fails at the first file.

    Example:
        ```python
        >>> first_hub_file("unc-nlp/lxmert-base-uncased", ["model.safetensors", "pytorch_model.bin"],
        ...                "model")  # doctest: +SKIP
        ('pytorch_model.bin', '/home/me/.cache/huggingface/hub/models--unc-nlp--lxmert-base-uncased/...')
        ```
    """
    offline_error = None
    for filename in filenames:
        try:
            path = hub_file(repo_id, filename, what, **hub_kwargs)
        except HubUnavailableError as error:
            if not (hub_offline() or hub_kwargs.get("local_files_only")):
                raise
            offline_error = offline_error or error
            continue
        if path is not None:
            return filename, path
    if offline_error is not None:
        raise HubUnavailableError(
            _unavailable_message(repo_id, what, ", ".join(filenames), None, local_files_only=True)
        ) from None
    return None


def cache_first_file(location: Location, filenames: Sequence[str], what: str, **hub_kwargs) -> dict:
    """
    Before a loader that reads a Hub repo but reports an unreachable Hub as a missing file (transformers' tokenizer
    loading does): bring the first of `filenames` the repo holds into the Hub cache, or raise
    [`HubUnavailableError`]. Nothing is done for a local location.

    Returns:
        `dict`: `hub_kwargs` for that loader, with `local_files_only=True` while Hub access is off.

    Example:
        ```python
        >>> from transformers import AutoTokenizer
        >>> location = locate("unc-nlp/lxmert-base-uncased")
        >>> kwargs = cache_first_file(location, ["tokenizer_config.json", "vocab.txt"], "tokenizer")  # doctest: +SKIP
        >>> tokenizer = AutoTokenizer.from_pretrained(location.name_or_path, **kwargs)  # doctest: +SKIP
        ```
    """
    hub_kwargs = offline_kwargs(hub_kwargs)
    if not location.is_local:
        first_hub_file(str(location.repo_id), filenames, what, **hub_kwargs)
    return hub_kwargs


@contextlib.contextmanager
def reaching_hub(repo_id: str, what: str, files: str = "its files", local_files_only: bool = False) -> Iterator[None]:
    """
    Turn an error of the block that comes from the Hub being off or out of reach (`OfflineModeIsEnabled`,
    `LocalEntryNotFoundError`, a connection or timeout error, anywhere in its chain of causes) into a
    [`HubUnavailableError`] that says which, and how to load without the Hub. Other errors pass unchanged.

    Example:
        ```python
        >>> from huggingface_hub.errors import OfflineModeIsEnabled
        >>> with reaching_hub("me/model", "model"):
        ...     raise OfflineModeIsEnabled("offline")
        Traceback (most recent call last):
        ...
        lxmert_hf.locations.HubUnavailableError: model 'me/model': ... lacks its files; Hub access is off ...
        ```
    """
    try:
        yield
    except HubUnavailableError:
        raise
    except Exception as error:
        cause = _hub_failure(error)
        if cause is None:
            raise
        raise HubUnavailableError(_unavailable_message(repo_id, what, files, cause, local_files_only)) from error


def _hub_failure(error: BaseException) -> BaseException | None:
    """The error of the chain that says the Hub was off or out of reach, else `None`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NETWORK_ERRORS):
            return _root_cause(error)
        error = error.__cause__ or error.__context__
    return None


def _root_cause(error: BaseException) -> BaseException:
    # huggingface_hub raises LocalEntryNotFoundError from the connection error it met: name the connection error.
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _unavailable_message(
    repo_id: str, what: str, files: str, cause: BaseException | None, local_files_only: bool
) -> str:
    missing = f"{what} {repo_id!r}: the Hub cache ({constants.HF_HUB_CACHE}) lacks {files}"
    local = (
        'To load without the Hub, pass a local folder (`from_pretrained("path/to/folder")`, `lxmert-hf ask --model '
        f"DIR`), or fill the Hub cache on a connected machine (`hf download {repo_id}`, then copy the "
        "cache folder and point HF_HUB_CACHE at it)"
    )
    if hub_offline() or isinstance(cause, OfflineModeIsEnabled):
        return (
            f"{missing}; Hub access is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so nothing was "
            f"downloaded. {local}; or unset HF_HUB_OFFLINE where the network reaches {constants.ENDPOINT}."
        )
    if local_files_only or cause is None:
        return f"{missing}; `local_files_only=True` was passed. {local}."
    return (
        f"{missing}; the Hub cannot be reached: the request to {constants.ENDPOINT} for {files} failed with "
        f"{type(cause).__name__}: {_first_line(cause)} (with nothing cached, huggingface_hub retries such a failure "
        f"with back-off, each request waiting up to HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s at first "
        "and longer on retries; the repo's other files were not tried). Check the network (and HTTPS_PROXY behind a "
        f"proxy). {local}, and set HF_HUB_OFFLINE=1 to use it without waiting for the network."
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
