"""Domain errors raised by the core; the API turns them into 422 responses."""

from __future__ import annotations


class PlanError(ValueError):
    """A request the planner cannot answer, with the field it came from.

    ``loc`` follows pydantic's convention: a tuple of keys from the request body's root,
    e.g. ``("lora", "target_modules")``. ``message`` says what is wrong and what is allowed.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {message}")
        self.loc = loc
        self.message = message
