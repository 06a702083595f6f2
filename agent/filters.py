"""Which files under the watch dir are sent: `POSTBOX_INCLUDE` and `POSTBOX_EXCLUDE`, each a
comma-separated list of gitignore-style patterns on the file's path relative to the watch dir
(`**`, `*`, `?`, `[...]`, a trailing `/` for a folder, a leading `/` anchoring at the watch dir,
`!` taking a path back; a comma in a pattern is `\\,`). A file is sent when INCLUDE is empty or
matches it, and EXCLUDE does not; within one list the last pattern that matches decides, as in
one .gitignore (pathspec's GitIgnoreSpec: a file under an excluded folder can be taken back).

Pure: the patterns are matched against the path as text, never against the file system. The
decision core (agent/core.py) drops what is excluded before the ledger sees it; `wait` names it
(agent/listing.py). `check` is what the settings refuse, one line each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from pathspec import GitIgnoreSpec

from agent.keys import TEMPORARY_SUFFIXES
from agent.shown import printable

INCLUDE, EXCLUDE = "POSTBOX_INCLUDE", "POSTBOX_EXCLUDE"
_SEPARATOR = re.compile(r"(?<!\\),")  # a comma not escaped


def patterns(text: str) -> list[str]:
    """The patterns of a setting's value, spaces around each dropped ("" gives none)."""
    if not text.strip():
        return []
    return [pattern.strip() for pattern in _SEPARATOR.split(text)]


def check(text: str, *, include: bool, watch_dir: str = "") -> None:
    """ValueError naming the first pattern of `text` that cannot be meant, and the fix: an empty
    one, one that can match no path under the watch dir (a comment, an unclosed `[`, a `.` or
    `..` or empty segment, an absolute path under `watch_dir`), or, in INCLUDE (`include`), one
    that matches only names the agent never sends (`.*`, `*.tmp`, `*.part`)."""
    root = watch_dir.rstrip("/")
    given = patterns(text)
    if include and given and all(p.startswith("!") for p in given):
        raise ValueError(
            f"{text!r} only takes back (!) what no pattern matched first: no file would be "
            "sent; name the files to send (*.csv), then what to take back (*.csv, !debug.csv)"
        )
    for pattern in given:
        if not pattern or pattern == "!":
            raise ValueError(
                f"an empty pattern in {text!r}: give patterns separated by single commas"
            )
        try:
            spec = GitIgnoreSpec.from_lines([pattern])
        except ValueError as exc:  # pathspec's GitIgnorePatternError
            raise ValueError(f"pattern {pattern!r} is not a gitignore pattern ({exc})") from None
        body = pattern.removeprefix("!")
        if root and (body == root or body.startswith(root + "/")):
            relative = body[len(root) :] or "/**"
            raise ValueError(
                f"pattern {pattern!r} is an absolute path: patterns are relative to the watch "
                f"dir {root} (write {relative!r}: a leading / anchors at the watch dir)"
            )
        if spec.patterns[0].include is None or _never_a_path(body):
            raise ValueError(
                f"pattern {pattern!r} can match no path under the watch dir (a comment, an "
                "unclosed [, or a ., .. or empty segment): write a path relative to the watch dir"
            )
        if include and not pattern.startswith("!") and _only_temporary(body):
            raise ValueError(
                f"pattern {pattern!r} matches only names the agent never sends (.*, *.tmp, "
                "*.part): include the names the files have once renamed"
            )


def _segments(body: str) -> list[str]:
    """A pattern's path segments, without the anchoring `/` and a folder's trailing one."""
    return body.removeprefix("/").removesuffix("/").split("/")


def _never_a_path(body: str) -> bool:
    return any(segment in ("", ".", "..") for segment in _segments(body))


def _only_temporary(body: str) -> bool:
    """Every path the pattern matches has a temporary name in it: one of its segments (each must
    match a component of the path, but `**`) starts with `.` or ends in `.tmp` or `.part`."""
    return any(
        s.startswith(".") or s.endswith(TEMPORARY_SUFFIXES) for s in _segments(body) if s != "**"
    )


@dataclass(frozen=True)
class Filters:
    """The two settings' values, as given (checked by the settings: `check`)."""

    include: str = ""
    exclude: str = ""
    _include: Optional[GitIgnoreSpec] = field(init=False, compare=False, repr=False)
    _exclude: Optional[GitIgnoreSpec] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, text in (("_include", self.include), ("_exclude", self.exclude)):
            given = patterns(text)
            object.__setattr__(self, name, GitIgnoreSpec.from_lines(given) if given else None)

    def __bool__(self) -> bool:
        """Some file may be excluded."""
        return self._include is not None or self._exclude is not None

    def describe(self) -> str:
        """The files sent, in words (the start's line, `check`)."""
        said = [f"matching {INCLUDE} ({printable(self.include)})"] if self.include.strip() else []
        said += (
            [f"not matching {EXCLUDE} ({printable(self.exclude)})"] if self.exclude.strip() else []
        )
        return f"only the files {' and '.join(said)}" if said else "every file"

    def excluded(self, relpath: str) -> str:
        """Why the file at `relpath` (`/`-separated, from the watch dir) is not sent; "" if it
        is."""
        if self._include is not None and not self._include.match_file(relpath):
            return f"not matched by {INCLUDE} ({self.include})"
        if self._exclude is not None:
            matched = self._exclude.check_file(relpath)
            if matched.include and matched.index is not None:
                return f"excluded by {EXCLUDE} ({patterns(self.exclude)[matched.index]})"
        return ""

    def folder_excluded(self, relpath: str) -> str:
        """Why every file under the folder `relpath` is excluded ("" if some may be sent): it
        matches EXCLUDE as a folder, and no `!` pattern could take one of its files back."""
        spec = self._exclude
        if spec is None or not relpath or any(not p.include for p in spec.patterns):
            return ""
        matched = spec.check_file(relpath + "/")
        if not matched.include or matched.index is None:
            return ""
        return f"excluded by {EXCLUDE} ({patterns(self.exclude)[matched.index]})"
