"""Small files fetched from http(s) URLs (answer lists, detector vocabularies), cached under `$HF_HOME/lxmert_hf`.

A download is cached only once the caller's parser has accepted it, so a bad download is never served again; the
cache only saves a download, and a cache that cannot be written is reported and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from huggingface_hub import constants

from lxmert_hf.files import atomic_open
from lxmert_hf.locations import hub_offline

__all__ = ["MAX_LIST_BYTES", "URL_PREFIXES", "URL_TIMEOUT_S", "cache_dir", "check_url_scheme", "read_cached_url"]

logger = logging.getLogger(__name__)

URL_PREFIXES = ("http://", "https://")
URL_TIMEOUT_S = 30
# The largest file `read_cached_url` downloads: answer lists and vocabularies are a few hundred KB (LXMERT's
# 3,129 answers: 60 KB), so a larger body is no such list, and reading stops there instead of filling the memory.
MAX_LIST_BYTES = 64 * 2**20
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: `C://x` is a Windows path
T = TypeVar("T")


def cache_dir(kind: str) -> Path:
    """Where downloads of one kind (`"answers"`, `"vocab"`) are cached: `$HF_HOME/lxmert_hf/<kind>`.

    Example:
        ```python
        >>> cache_dir("answers").parts[-2:]
        ('lxmert_hf', 'answers')
        ```
    """
    return Path(constants.HF_HOME) / "lxmert_hf" / kind


def check_url_scheme(source: object, what: str, also: tuple[str, ...] = ()) -> None:
    """
    Refuse a URL whose scheme is not http(s) (nor one of `also`, e.g. `"hf"`), naming `what` (the argument) and the
    scheme: `file://`, `ftp://` and the like are never fetched. Anything else (a path, a non-string) passes.

    Example:
        ```python
        >>> check_url_scheme("answers.json", "--answers")
        >>> check_url_scheme("ftp://example.org/answers.json", "--answers")
        Traceback (most recent call last):
        ...
        ValueError: --answers ftp://example.org/answers.json: the URL scheme 'ftp' is not supported; use an ...
        ```
    """
    match = _SCHEME.match(source) if isinstance(source, str) else None
    if match is None or source.startswith(URL_PREFIXES) or match.group(1).lower() in also:
        return
    raise ValueError(
        f"{what} {source}: the URL scheme {match.group(1)!r} is not supported; use an http(s) URL, or download the "
        "file and pass its path."
    )


def read_cached_url(url: str, kind: str, parse: Callable[[bytes, str], T], what: str, fix: str) -> T:
    """
    `parse(data, where)` of the file at `url`, from the cache of `kind` when it holds it, else downloaded.

    Args:
        url (`str`): an http(s) URL.
        kind (`str`): the cache folder under `$HF_HOME/lxmert_hf` (see [`cache_dir`]).
        parse (`Callable[[bytes, str], T]`): turns the file's bytes into the result, raising on bad content;
            `where` names the URL (and the cached copy) for its messages.
        what (`str`), fix (`str`): name the file and the way out in the error of a failed download:
            "cannot download {what} {url}: {error}; {fix}".

    Raises:
        `ValueError`: the download failed, was larger than [`MAX_LIST_BYTES`] (64 MB) or, with `HF_HUB_OFFLINE`
            set, was not tried (nothing cached); or `parse` refused the content (then nothing is cached).

    Example:
        ```python
        >>> read_cached_url("https://example.invalid/a.txt", "answers", lambda data, where: data, "the answer list",
        ...                 "download it and pass the file.")  # doctest: +SKIP
        ```
    """
    suffix = Path(urlsplit(url).path).suffix.lower()
    cached = cache_dir(kind) / (hashlib.sha256(url.encode()).hexdigest()[:32] + (suffix or ".txt"))
    if cached.is_file():
        return parse(cached.read_bytes(), f"{url} (cached as {cached})")
    if hub_offline():
        raise ValueError(
            f"cannot download {what} {url}: network access is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set) "
            f"and no copy is cached in {cached.parent}; {fix}"
        )
    request = urllib.request.Request(url, headers={"User-Agent": "lxmert_hf"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            data = response.read(MAX_LIST_BYTES + 1)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot download {what} {url}: {error}; {fix}") from error
    if len(data) > MAX_LIST_BYTES:
        raise ValueError(
            f"cannot download {what} {url}: it is larger than {MAX_LIST_BYTES / 2**20:g} MB "
            "(lxmert_hf.downloads.MAX_LIST_BYTES), too large for such a list; check the URL."
        )
    result = parse(data, url)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cached, "wb") as handle:  # a concurrent reader never sees half a file
            handle.write(data)
    except OSError as error:
        logger.warning("could not cache %s %s in %s: %s", what, url, cached, error)
    return result
