"""Visual Genome object and attribute names for the detector's class indices."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from huggingface_hub import constants

from lxmert_hf.files import atomic_open

# The vocabularies the Visual Genome detector was trained with (index = line number, background excluded).
VG_OBJECTS_URL = (
    "https://raw.githubusercontent.com/airsplay/py-bottom-up-attention/master/demo/data/genome/1600-400-20/"
    "objects_vocab.txt"
)
VG_ATTRIBUTES_URL = (
    "https://raw.githubusercontent.com/airsplay/py-bottom-up-attention/master/demo/data/genome/1600-400-20/"
    "attributes_vocab.txt"
)
URL_TIMEOUT_S = 30


def vocab_cache_dir() -> Path:
    """Where downloaded vocabularies are cached: `$HF_HOME/lxmert_hf/vocab`."""
    return Path(constants.HF_HOME) / "lxmert_hf" / "vocab"


def parse_vocab(text: str) -> list[str]:
    """
    Parse a vocabulary file: one class per line, index = line number; a line may list comma-separated synonyms,
    of which the first is used.

    Example:
        ```python
        >>> from lxmert_hf.detection.vocab import parse_vocab
        >>> parse_vocab("yolk\\nman,men\\nshirt\\n")
        ['yolk', 'man', 'shirt']
        ```
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.split(",")[0].strip() for line in lines]


def load_vocab(source: str | os.PathLike, expected_size: int | None = None) -> list[str]:
    """
    Read a vocabulary from a local file or an http(s) URL (downloaded once, then cached).

    Args:
        source (`str` or `os.PathLike`): a path, or a URL such as [`VG_OBJECTS_URL`].
        expected_size (`int`, *optional*): the number of names the detector predicts; a mismatch is an error.

    Example:
        ```python
        >>> import tempfile, pathlib
        >>> from lxmert_hf.detection.vocab import load_vocab
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "attributes.txt"
        >>> _ = path.write_text("red\\nwooden,wood\\n")
        >>> load_vocab(path, expected_size=2)
        ['red', 'wooden']
        ```
    """
    text = _read_source(str(source))
    names = parse_vocab(text)
    if expected_size is not None and len(names) != expected_size:
        raise ValueError(
            f"vocabulary {source} holds {len(names)} names but the detector predicts {expected_size} classes; "
            "pass the vocabulary the checkpoint was trained with."
        )
    return names


def _read_source(source: str) -> str:
    if source.startswith(("http://", "https://")):
        return _cached_download(source).read_text(encoding="utf-8")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"vocabulary file {path} does not exist; pass a path or an http(s) URL.")
    return path.read_text(encoding="utf-8")


def _cached_download(url: str) -> Path:
    cache_dir = vocab_cache_dir()
    target = cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".txt")
    if target.is_file():
        return target
    request = urllib.request.Request(url, headers={"User-Agent": "lxmert_hf"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            data = response.read()
    except OSError as error:
        raise ValueError(f"cannot download vocabulary {url}: {error}; pass a local file instead.") from error
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "wb") as handle:  # a concurrent reader never sees half a file
        handle.write(data)
    return target
