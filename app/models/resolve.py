"""One resolver for every entry point (API estimate and fit, the page, the CLI): which config.json a request's
``model`` means, and where it came from.

- a catalog id (exact, or differing only in case) → the catalog's config (the core reads it by id);
- ``org/name`` or ``org/name@revision`` outside the catalog → that repo's ``config.json`` from the Hub
  (:mod:`app.models.hub`), answered as for a pasted config;
- ``{"config": {...}}`` → the pasted config.

Configs that would need ``trust_remote_code`` are refused with the reason; MXFP4/FP8 checkpoints add an
assumption saying what the fine-tuning recipe loads (:mod:`app.core.model_types`).
"""

from __future__ import annotations

import copy

from pydantic import ValidationError

from app.core.catalog import model_config, model_configs, model_source
from app.core.errors import PlanError
from app.core.hub_ids import parse_hub_id
from app.core.litgpt import with_default_targets
from app.core.model_types import checkpoint_quantization_note, remote_code_reason
from app.core.request import ModelConfig, PlanRequest
from app.core.result import EstimateResult, ModelSource
from app.models.generic import ensure_generic
from app.models.hub import hub_config, hub_error
from app.models.peak_fit import ensure_peak_fit


def _catalog_id(text: str) -> str | None:
    configs = model_configs()
    if text in configs:
        return text
    return {k.lower(): k for k in configs}.get(text.strip().lower())


def resolve_request(req: PlanRequest, *, fit_peak: bool = True,
                    fit_wait_s: float | None = None) -> tuple[PlanRequest, ModelSource]:
    """The request the core can answer (a Hub id replaced by its config) and the config's :class:`ModelSource`;
    a model_type outside the hand-written rules is built once from the real libraries
    (:func:`app.models.generic.ensure_generic`), and its activations fitted once per setting from traces of small
    variants (:func:`app.models.peak_fit.ensure_peak_fit`; not with ``fit_peak=False``, e.g. before a full trace;
    ``fit_wait_s``: how long to wait for that fit, see there), before the core is asked.

    Raises :class:`PlanError` on ``("model", …)`` (→ 422) when the Hub cannot give the config, the config
    needs remote code, or transformers/PEFT refuse it. An unknown id that is not ``org/name`` is left to the
    core, which says so.
    """
    resolved, source = _resolve(req)
    resolved = with_default_targets(resolved)  # as the core does: PEFT resolves litgpt's own default targets
    ensure_generic(resolved)
    if fit_peak:
        ensure_peak_fit(resolved, fit_wait_s)
    return resolved, source


def _resolve(req: PlanRequest) -> tuple[PlanRequest, ModelSource]:
    model = req.model
    if isinstance(model, ModelConfig):
        reason = remote_code_reason(model.config)
        if reason is not None:
            raise PlanError(("model", "config", "model_type"), reason)
        note = checkpoint_quantization_note(model.config)
        return req, ModelSource(kind="pasted", origin="the request's config.json", notes=[note] if note else [])
    catalog_id = _catalog_id(model)
    hub = parse_hub_id(model) if catalog_id is None else None
    if hub is None:
        model_id = catalog_id or model
        note = checkpoint_quantization_note(model_config(model_id))  # the core's 422 for an unknown id
        source = ModelSource(kind="catalog", hub_id=model_id, origin=model_source(model_id),
                             notes=[note] if note else [])
        return req.model_copy(update={"model": model_id}), source
    repo_id, revision = hub
    fetched = hub_config(repo_id, revision)
    reason = remote_code_reason(fetched.config)
    if reason is not None:
        raise hub_error(repo_id, f"{reason}; paste the config.json of an equivalent model transformers knows")
    try:
        pasted = ModelConfig.model_validate({"config": copy.deepcopy(fetched.config)})
    except ValidationError as exc:
        raise hub_error(repo_id, f"its config.json: {exc.errors()[0]['msg']}") from None
    note = checkpoint_quantization_note(fetched.config)
    source = ModelSource(kind="hub", hub_id=repo_id, revision=fetched.revision, commit_sha=fetched.commit_sha,
                         origin=fetched.origin, notes=[note] if note else [])
    return req.model_copy(update={"model": pasted}), source


def with_source(result: EstimateResult, source: ModelSource) -> EstimateResult:
    """The core's answer with where its config came from: ``source``, its notes among the assumptions, and the
    Hub id as ``model.id`` for a Hub config."""
    model = result.model.model_copy(update={"id": source.hub_id}) if source.kind == "hub" else result.model
    return result.model_copy(update={"source": source, "model": model,
                                     "assumptions": [*result.assumptions, *source.notes]})
