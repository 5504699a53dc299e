"""Visual Genome object and attribute names for the detector's class indices."""

from __future__ import annotations

import os
from pathlib import Path

from lxmert_hf.downloads import URL_PREFIXES, cache_dir, check_url_scheme, read_cached_url

# The vocabularies the Visual Genome detector was trained with (index = line number, background excluded).
VG_OBJECTS_URL = (
    "https://raw.githubusercontent.com/airsplay/py-bottom-up-attention/master/demo/data/genome/1600-400-20/"
    "objects_vocab.txt"
)
VG_ATTRIBUTES_URL = (
    "https://raw.githubusercontent.com/airsplay/py-bottom-up-attention/master/demo/data/genome/1600-400-20/"
    "attributes_vocab.txt"
)


def vocab_cache_dir() -> Path:
    """Where downloaded vocabularies are cached: `$HF_HOME/lxmert_hf/vocab`."""
    return cache_dir("vocab")


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
    if source.startswith(URL_PREFIXES):
        return read_cached_url(
            source, "vocab", lambda data, where: data.decode("utf-8"), "vocabulary", "pass a local file instead."
        )
    check_url_scheme(source, "vocabulary")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"vocabulary file {path} does not exist; pass a path or an http(s) URL.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"vocabulary file {path} is not UTF-8 text; pass a text file with one name a line.") from None
