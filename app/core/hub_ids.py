"""Hugging Face Hub model ids as the planner spells them: ``org/name`` or ``org/name@revision``. Pure Python, so
the importers (app/importers) and the Hub client (app/models/hub.py) read ids alike."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,128}))?")
"""huggingface_hub's REPO_ID rules (utils/_validators.py): namespace/name of [\\w.-], at most 96 characters;
"@revision" (branch, tag or commit) is this planner's spelling of hf_hub_download's ``revision``."""


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``'org/name'`` or ``'org/name@revision'`` → (repo id, revision or None); None when it is not a Hub id."""
    match = HUB_ID.fullmatch(text.strip())
    if match is None or ".." in match["repo"] or match["repo"].endswith((".", "-")):
        return None
    return match["repo"], match["rev"]
