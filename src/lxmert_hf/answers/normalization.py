"""The ways answers are compared, each named after the original it reproduces.

- [`normalize_answer`], **VQA**: the official VQA evaluation's answer processing (its `processPunctuation` and
  `processDigitArticle`), quirks included, because a VQA model is judged by that tool: a prediction counts only
  when it equals the annotators' answers *after* that processing. Soft scores and VQA vocabularies use it too.
- [`exact_answer`], **GQA**: answers are compared as written. The official GQA evaluation and the original
  preprocessing use each answer string unchanged.
- [`lxmert_qa_normalize`], **transplant**: how the original code (`load_lxmert_qa` with its `AnswerTable`) matched
  the answers of a fine-tuning vocabulary to the rows of the pre-training QA head (`all_ans.json`).
- [`bottom_up_vqa_normalize`], **VQA vocabulary counting**: the official processing without its whitespace step, as
  bottom-up-attention-vqa's `compute_softscore.py` counted answers for the original VQA vocabulary.

[`ANSWER_NORMALIZATIONS`] maps the names `"vqa"`, `"gqa"` and `"transplant"` to them, and [`get_normalization`]
turns the `normalize` argument of [`soft_scores`] and [`AnswerVocabulary.build`] into one of them. The number
words live in one table, [`NUMBER_WORDS`]; each normalization says which of its entries it applies.

Example:
    ```python
    >>> from lxmert_hf.answers import exact_answer, lxmert_qa_normalize, normalize_answer
    >>> normalize_answer("Two t-shirts."), exact_answer("t-shirt"), lxmert_qa_normalize("The Two.")
    ('2 t shirts', 't-shirt', '2')
    ```
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "ANSWER_NORMALIZATIONS",
    "NUMBER_WORDS",
    "bottom_up_vqa_normalize",
    "clean_whitespace",
    "exact_answer",
    "get_normalization",
    "lxmert_qa_normalize",
    "normalize_answer",
]

# The number words every normalization below draws from: the official VQA tool's table (plus its "none", see
# `_VQA_NUMBER_WORDS`); the original transplant matching uses the words one to ten.
NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

# Characters the official tool removes (or turns into a space, see `_strip_punctuation`). The apostrophe, the
# colon and the period are deliberately absent: apostrophes are needed by the contraction table, and periods
# follow their own rule.
_PUNCTUATION = frozenset(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period is dropped unless a digit follows it ("3.5" keeps its decimal point, "dogs." loses it).
_PERIOD = re.compile(r"\.(?!\d)")
# The official tool passes the flag `re.UNICODE` (whose value is 32) where `re.sub` expects its `count`, so only
# the first 32 such periods of an answer are removed. Reproduced so that scores match to the last digit.
_MAX_PERIODS_REMOVED = 32

# The official tool also reads "none" as the number 0.
_VQA_NUMBER_WORDS = {**NUMBER_WORDS, "none": "0"}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, one line per written form it produces, followed by the (lower-case) spellings
# that are rewritten into it. Entries of the official table whose key has a capital letter ("Im", "Ive", "Id've",
# "I'dve") are left out: words are lower-cased before the lookup, so those entries never apply. "somebody'd" ->
# "somebodyd" runs backwards in the official table and is kept as is, since the official score depends on it.
_CONTRACTION_TABLE = """
ain't: aint
aren't: arent
can't: cant
could've: couldve
couldn't: couldnt
couldn't've: couldnt've couldn'tve
didn't: didnt
doesn't: doesnt
don't: dont
hadn't: hadnt
hadn't've: hadnt've hadn'tve
hasn't: hasnt
haven't: havent
he'd: hed
he'd've: hed've he'dve
he's: hes
how'd: howd
how'll: howll
how's: hows
isn't: isnt
it'd: itd
it'd've: itd've it'dve
it'll: itll
let's: let's
ma'am: maam
mightn't: mightnt
mightn't've: mightnt've mightn'tve
might've: mightve
mustn't: mustnt
must've: mustve
needn't: neednt
not've: notve
o'clock: oclock
oughtn't: oughtnt
'ow's'at: ow's'at 'ows'at 'ow'sat
shan't: shant
she'd've: shed've she'dve
she's: she's
should've: shouldve
shouldn't: shouldnt
shouldn't've: shouldnt've shouldn'tve
somebodyd: somebody'd
somebody'd've: somebodyd've somebody'dve
somebody'll: somebodyll
somebody's: somebodys
someone'd: someoned
someone'd've: someoned've someone'dve
someone'll: someonell
someone's: someones
something'd: somethingd
something'd've: somethingd've something'dve
something'll: somethingll
that's: thats
there'd: thered
there'd've: thered've there'dve
there're: therere
there's: theres
they'd: theyd
they'd've: theyd've they'dve
they'll: theyll
they're: theyre
they've: theyve
'twas: twas
wasn't: wasnt
we'd've: wed've we'dve
we've: weve
weren't: werent
what'll: whatll
what're: whatre
what's: whats
what've: whatve
when's: whens
where'd: whered
where's: wheres
where've: whereve
who'd: whod
who'd've: whod've who'dve
who'll: wholl
who's: whos
who've: whove
why'll: whyll
why're: whyre
why's: whys
won't: wont
would've: wouldve
wouldn't: wouldnt
wouldn't've: wouldnt've wouldn'tve
y'all: yall
y'all'll: yall'll y'allll
y'all'd've: yall'd've y'alld've y'all'dve
you'd: youd
you'd've: youd've you'dve
you'll: youll
you're: youre
you've: youve
"""


def _parse_contractions(table: str) -> dict[str, str]:
    contractions = {}
    for line in table.strip().splitlines():
        written, spellings = line.split(": ")
        for spelling in spellings.split():
            contractions[spelling] = written
    return contractions


_CONTRACTIONS = _parse_contractions(_CONTRACTION_TABLE)
# Number words, articles and contractions never overlap, so the official three passes over the words (numbers,
# then articles, then contractions) collapse into one lookup; `None` marks a dropped word.
_WORD_REWRITES: dict[str, str | None] = {**_CONTRACTIONS, **_VQA_NUMBER_WORDS, **dict.fromkeys(_ARTICLES)}


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a string, got {type(text).__name__}; convert answers with `str()` first.")


def clean_whitespace(text: str) -> str:
    """Replace newlines and tabs by spaces and strip, as the official evaluation does before anything else.

    Example:
        ```python
        >>> clean_whitespace(" red\\tand\\nwhite ")
        'red and white'
        ```
    """
    return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
    # Every decision looks at the text as it came in, not at the partially processed one, as the official tool does.
    present = _PUNCTUATION.intersection(text)
    if present:
        drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
        table = {}
        for mark in present:
            # A mark touching a space ("yes , no") or any answer with a number like "1,000" loses its marks;
            # otherwise a mark separates words ("t-shirt" -> "t shirt").
            glued = drop_all or f"{mark} " in text or f" {mark}" in text
            table[ord(mark)] = "" if glued else " "
        text = text.translate(table)
    if "." in text:
        text = _PERIOD.sub("", text, count=_MAX_PERIODS_REMOVED)
    return text


def _rewrite_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _WORD_REWRITES.get(word, word)
        if word is not None:
            words.append(word)
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalize an answer exactly as the official VQA evaluation does.

    In order: newlines and tabs become spaces and the ends are stripped; punctuation marks are removed when they
    touch a space or when the answer contains a digit-comma-digit group, and replaced by a space otherwise; periods
    not followed by a digit are removed; the answer is lower-cased and split on whitespace; number words become
    digits (including "none" -> "0"); the articles "a", "an" and "the" are dropped; spellings without apostrophe
    are mapped to their contraction ("dont" -> "don't"); the words are joined by single spaces.

    Args:
        text (`str`): an answer, from an annotator or from a model.

    Returns:
        `str`: the normalized answer.

    Example:
        ```python
        >>> [normalize_answer(a) for a in ["t-shirt", "Two dogs.", "1,000", "none", "dont", "The Eiffel Tower"]]
        ['t shirt', '2 dogs', '1000', '0', "don't", 'eiffel tower']
        ```
    """
    _check_text(text)
    return _rewrite_words(_strip_punctuation(clean_whitespace(text)))


def bottom_up_vqa_normalize(text: str) -> str:
    """How the original VQA vocabulary was counted: `preprocess_answer` of bottom-up-attention-vqa's
    `compute_softscore.py`, applied to each `multiple_choice_answer`.

    It is the official evaluation's normalization ([`normalize_answer`]) without that tool's first step: newlines,
    tabs and the spaces at the ends are left in place, so that a punctuation mark next to them is removed where
    the official tool would turn it into a space. The two differ on no answer without such whitespace.

    Example:
        ```python
        >>> bottom_up_vqa_normalize("Two t-shirts."), bottom_up_vqa_normalize("t-shirt- ")
        ('2 t shirts', 'tshirt')
        ```
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a string, got {type(text).__name__}; convert answers with `str()` first.")
    return _rewrite_words(_strip_punctuation(text))


def exact_answer(text: str) -> str:
    """GQA's comparison: the answer as written, unchanged (only checked to be a string).

    The official GQA evaluation compares predictions with the gold answer string exactly, and the original code
    trains on `datum["answer"]` as written: "t-shirt" and "taking a photo" are answers of their own.

    Example:
        ```python
        >>> exact_answer("t-shirt"), exact_answer("Taking a photo")
        ('t-shirt', 'Taking a photo')
        ```
    """
    _check_text(text)
    return text


# The original `AnswerTable.ANS_CONVERT`. Its article entries apply only where stripping one leading article leaves
# another one ("the a man" -> "a man" -> "man"), since "a ", "an " and "the " are each stripped once beforehand.
_TRANSPLANT_REWRITES = {
    **{word: NUMBER_WORDS[word] for word in NUMBER_WORDS if word != "zero"},
    "grey": "gray",
    "a man": "man",
    "the man": "man",
    "a woman": "woman",
    "the woman": "woman",
}
_TRANSPLANT_ARTICLES = ("a ", "an ", "the ")


def lxmert_qa_normalize(text: str) -> str:
    """The transplant matching: the key under which a fine-tuning answer finds its row of the pre-training QA head.

    Exactly the original `AnswerTable.convert_ans`: lower-case; drop one trailing period, then strip the ends; drop
    a leading "a ", then a leading "an ", then a leading "the " (each once, in that order, stripping the ends after
    each); map the number words one to ten to digits, "grey" to "gray", and "a man"/"the man"/"a woman"/"the woman"
    to "man"/"woman". An answer without trailing period or leading article keeps its surrounding whitespace, as in
    the original. [`~lxmert_hf.transplant_answer_head`] looks the result up among the head's answers as written.

    Example:
        ```python
        >>> lxmert_qa_normalize("The Two."), lxmert_qa_normalize("grey"), lxmert_qa_normalize("the a man")
        ('2', 'gray', 'man')
        >>> lxmert_qa_normalize(" two"), lxmert_qa_normalize(" two.")
        (' two', '2')
        ```
    """
    _check_text(text)
    answer = text.lower()
    if answer.endswith("."):
        answer = answer[:-1].strip()
    for article in _TRANSPLANT_ARTICLES:
        if answer.startswith(article):
            answer = answer[len(article) :].strip()
    return _TRANSPLANT_REWRITES.get(answer, answer)


ANSWER_NORMALIZATIONS: dict[str, Callable[[str], str]] = {
    "vqa": normalize_answer,
    "gqa": exact_answer,
    "transplant": lxmert_qa_normalize,
}


def get_normalization(normalize: bool | str) -> Callable[[str], str]:
    """The normalization a `normalize` argument names: `True` is VQA's, `False` the exact strings, a name one of
    [`ANSWER_NORMALIZATIONS`].

    Example:
        ```python
        >>> get_normalization(True)("Two"), get_normalization("gqa")("Two")
        ('2', 'Two')
        ```
    """
    if isinstance(normalize, bool):
        return normalize_answer if normalize else exact_answer
    if normalize not in ANSWER_NORMALIZATIONS:
        raise ValueError(
            f"`normalize` must be True, False or one of {sorted(ANSWER_NORMALIZATIONS)}, got {normalize!r}."
        )
    return ANSWER_NORMALIZATIONS[normalize]
