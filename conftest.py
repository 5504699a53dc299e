"""Doctests of `src/lxmert_hf` for `pytest` (see `[tool.pytest.ini_options]` in pyproject.toml).

Our docstring examples are fenced in the transformers format, a ```` ```python ```` line before the `>>>` lines and a
```` ``` ```` line after the expected output. Plain doctest would read that closing fence as expected output, so the
doctests of every module are parsed again here by a parser whose expected output stops at a fence line.
"""

from __future__ import annotations

import doctest
import re

import pytest
from _pytest.doctest import DoctestModule

# The evaluate metric scripts are loaded by `evaluate.load` from their folder, not imported as package modules; their
# examples need that loader (the library functions they wrap have examples of their own).
collect_ignore_glob = ["src/lxmert_hf/evaluate_metrics/*"]


class FencedDocTestParser(doctest.DocTestParser):
    """A parser for fenced examples: expected output ends at a blank line, a `>>>` line or a ```` ``` ```` line."""

    _EXAMPLE_RE = re.compile(
        r"""
        (?P<source>
            (?:^(?P<indent> [ ]*) >>>    .*)    # the first line of an example
            (?:\n           [ ]*  \.\.\. .*)*)  # its continuation lines
        \n?
        (?P<want> (?:(?![ ]*$)                  # expected output: lines that are not blank,
                     (?![ ]*>>>)                # do not start an example
                     (?![ ]*```)                # and do not close the fence
                     .+$\n?
                  )*)
        """,
        re.MULTILINE | re.VERBOSE,
    )


PARSER = FencedDocTestParser()


class FencedDoctestModule(DoctestModule):
    """pytest's doctests of a module, with each docstring parsed by `FencedDocTestParser`."""

    def collect(self):
        for item in super().collect():
            test = item.dtest
            item.dtest = PARSER.get_doctest(test.docstring, test.globs, test.name, test.filename, test.lineno)
            yield item


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collectors = yield
    return [
        FencedDoctestModule.from_parent(parent, path=file_path) if type(collector) is DoctestModule else collector
        for collector in collectors
    ]
