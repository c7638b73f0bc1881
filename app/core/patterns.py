"""``lora.target_modules`` regexes, matched in linear time with RE2 (google-re2), compiled once per pattern.

PEFT matches a string ``target_modules`` with Python's ``re.fullmatch(target_modules, module_name)``
(peft 0.21.2 ``tuners/tuners_utils.py: check_target_module_exists``). Python's engine backtracks, so a
pattern such as ``(?:.|.){1,30}Z`` takes hours on one name; RE2 is an automaton with no backtracking, so
matching costs O(len(pattern) · len(name)) whatever the pattern.

Accepted subset: every pattern RE2 compiles, which is Python's syntax minus backreferences (``\\1``,
``(?P=name)``), lookaround (``(?=``, ``(?!``, ``(?<=``, ``(?<!``), conditionals, atomic groups and
possessive quantifiers, and with counted repetition ``{n,m}`` up to 1000. On module names (ASCII
letters, digits, ``_`` and ``.``) RE2's full match gives the same yes/no answer as ``re.fullmatch`` for
every pattern in that subset: both engines read the same syntax the same way, and a full match is a
yes/no question, so leftmost-first vs leftmost-longest preference does not arise. Patterns outside the
subset are refused with a 422 naming the construct RE2 rejected.
"""

from __future__ import annotations

from functools import lru_cache

import re2

MAX_PATTERN_CHARS = 256
"""Longest accepted ``target_modules`` regex (characters)."""

RE2_MAX_MEM = 8 << 20
"""RE2's memory budget per compiled pattern (bytes); a pattern needing more is refused."""


class PatternError(ValueError):
    """A pattern RE2 refuses (message says why)."""


@lru_cache(maxsize=256)
def compile_target_regex(pattern: str) -> re2._Regexp:
    """The compiled pattern (cached), or :class:`PatternError` with RE2's reason."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"is not a regular expression this service can match in linear time ({reason}); accepted: Python "
            "re syntax without backreferences, lookaround or possessive/atomic groups, repetition counts ≤ 1000"
        ) from None
