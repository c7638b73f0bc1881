"""``peft-planner``: parameters and per-GPU memory of a fine-tuning run from the command line or CI.

Commands (inputs: config FILEs and/or flags; flags override files)::

    peft-planner estimate [FILE ...] [flags] [--json]      parameters, memory breakdown, peak phase
    peft-planner fit      [FILE ...] [flags] [--budget 24GiB]  largest micro-batch / seq_len / r that fit, GPU plan
    peft-planner check    [FILE ...] [flags] [--budget 24GiB]  exit 0 if memory.total <= budget, else 1
    peft-planner export   [FILE ...] [flags] [--format trl]    the plan as a TRL / axolotl / LLaMA-Factory config

FILEs are PlanRequest bodies, PEFT adapter_config.json (or the adapter directory), BitsAndBytesConfig
dicts, axolotl YAMLs, HF TrainingArguments / TRL SFTConfig JSON or YAML, or model config.json files, merged in
order (see :mod:`app.importers`). On stderr: the format detected for each file, keys the importers cannot map,
and every memory-relevant default assumed (``--strict`` refuses them; ``--json`` lists them as ``assumed``).

Runs the planner in-process by default; ``--url http://127.0.0.1:8000`` asks a running server's JSON API
(``POST /api/v1/estimate``, ``POST /api/v1/fit``) instead, with the same output.

Exit codes: 0 done (check: fits); 1 check: does not fit; 2 bad input (the message names the field);
3 the server (``--url``) cannot be reached or failed.

``--help`` imports nothing beyond the standard library; the core (pydantic, no torch, no FastAPI) is
imported when a command runs, httpx only with ``--url``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from app.cli_export import add_export_parser, export_text, print_lines
from app.cli_flags import input_flags
from app.cli_output import gib, render_estimate, render_fit

EXIT_OK, EXIT_NO_FIT, EXIT_BAD_INPUT, EXIT_SERVER = 0, 1, 2, 3
EXIT_SIGPIPE = 141  # stdout closed early (128 + SIGPIPE)

MODEL_KEYS = frozenset({"base_model", "base_model_config", "base_model_name_or_path", "model_name_or_path", "model"})


class CliError(Exception):
    """Ends the command with ``code`` after printing ``lines`` to stderr."""

    def __init__(self, code: int, lines: Sequence[str]) -> None:
        super().__init__("; ".join(lines))
        self.code, self.lines = code, list(lines)


def _bad(*lines: str) -> CliError:
    return CliError(EXIT_BAD_INPUT, lines)


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    inputs = input_flags()

    parser = argparse.ArgumentParser(
        prog="peft-planner",
        description="Parameters and per-GPU memory of LoRA/QLoRA/DoRA/full fine-tuning runs, before you rent GPUs.",
        epilog="Exit codes: 0 ok (check: fits), 1 check: does not fit, 2 bad input, 3 server unreachable (--url).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("estimate", parents=[inputs], help="parameters, memory breakdown and peak phase",
                       description="Parameters and per-GPU memory of one run (POST /api/v1/estimate).")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("fit", parents=[inputs], help="largest micro-batch, seq_len and r that fit; GPU plan",
                       description="What fits a per-GPU budget (POST /api/v1/fit).")
    p.add_argument("--budget", help="per-GPU budget: 24GiB, 80 GiB, 512MiB, 24GB (decimal) or bytes; "
                                    "default: the --gpu's VRAM")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("check", parents=[inputs], help="exit 0 if memory.total fits the budget, 1 if not",
                       description="Exit 0 when memory.total <= budget, 1 when it does not (printing by how much), "
                                   "2 on bad input, 3 when --url cannot be reached.")
    p.add_argument("--budget", help="per-GPU budget: 24GiB, 80 GiB, 512MiB, 24GB (decimal) or bytes; "
                                    "default: the --gpu's VRAM")
    p.set_defaults(func=cmd_check)
    add_export_parser(sub, inputs)
    sub.add_parser("worker", add_help=False, help="run calibration jobs of a shared database on this node's GPUs "
                   "(docs/deployment.md; `peft-planner worker --help`)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft-planner")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------- the request


def build_body(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any]]:
    """The PlanRequest body from the FILEs (merged) and the flags, and the importers' notes."""
    from app.core.request import parse_target_modules
    from app.importers import ConfigImportError, load_plan_files, planner_defaults, resolve_model

    try:
        body, notes = load_plan_files(args.files) if args.files else ({}, [])
        if args.model is not None:
            model, _ = resolve_model(args.model, "--model", "model")
            body["model"] = model if model is not None else args.model  # unknown ids: the planner says so
            # a file's base model that is not in the catalog no longer matters once --model is given
            notes = [n for n in notes if not (n.kind == "unsupported" and n.key in MODEL_KEYS)]
    except ConfigImportError as exc:
        raise _bad(f"{exc.source}: {exc.key}: {exc.message}" if exc.key else f"{exc.source}: {exc.message}") from None

    flagged: set[str] = set()  # request fields a flag set

    def put(section: str, field: str, value: Any) -> None:
        if value is not None:
            if not isinstance(body.get(section), dict):
                body[section] = {}
            body[section][field] = value
            flagged.add(f"{section}.{field}")

    if args.method is not None:
        body["method"] = args.method
        flagged.add("method")
    if args.transformers_version is not None:
        body["transformers_version"] = args.transformers_version
        flagged.add("transformers_version")
    if args.torch_version is not None:
        body["torch_version"] = args.torch_version
        flagged.add("torch_version")
    put("lora", "r", args.r)
    put("lora", "lora_alpha", args.lora_alpha)
    put("lora", "lora_dropout", args.lora_dropout)
    if args.target_modules is not None:
        put("lora", "target_modules", parse_target_modules(args.target_modules))
    put("training", "seq_len", args.seq_len)
    put("training", "micro_batch_size", args.micro_batch_size)
    put("training", "gradient_accumulation_steps", args.gradient_accumulation_steps)
    put("training", "optim", args.optim)
    put("training", "precision", args.precision)
    put("training", "attn_implementation", args.attn_implementation)
    put("training", "framework", args.framework)
    put("training", "gradient_checkpointing", args.gradient_checkpointing)
    for switch in ("use_liger_kernel", "activation_offloading", "packing", "padding_free", "optimizer_in_bwd"):
        put("training", switch, getattr(args, switch))
    put("training", "num_output_chunks", args.num_output_chunks)
    put("hardware", "gpu", args.gpu)
    put("hardware", "num_gpus", args.num_gpus)
    put("hardware", "sharding", args.sharding)
    put("hardware", "pytorch_cuda_alloc_conf", args.alloc_conf)
    put("hardware", "offload_optimizer", args.offload_optimizer)
    put("hardware", "offload_param", args.offload_param)
    put("hardware", "reduce_bucket_size", args.reduce_bucket_size)
    put("hardware", "stage3_prefetch_bucket_size", args.stage3_prefetch_bucket_size)
    for item in args.set:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise _bad(f"--set: expected PATH=VALUE (e.g. training.seq_len=4096), got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, last = path.strip().split(".")
        node = body
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
        flagged.add(path.strip())
    # a default a file assumed no longer applies once a flag gives the field; the planner's own defaults follow
    notes = [n for n in notes if not (n.kind == "assumed" and n.field in flagged)]
    return body, notes + planner_defaults(body)


def assumed_line(n: Any) -> str:
    """'assumed training.seq_len=2048 (default; not in any input)'; a file's default names the file."""
    from app.importers.assumed import SOURCE  # the planner's own defaults (not a file's)

    where = "" if n.source == SOURCE else f"{n.source}: "
    return f"{where}assumed {n.field}={json.dumps(n.value)} ({n.message})"


def assumed_json(notes: Sequence[Any]) -> list[dict[str, Any]]:
    """The ``assumed`` list of ``--json`` output: field, value, and who assumed it (a file or the planner)."""
    return [{"field": n.field, "value": n.value, "source": n.source, "reason": n.message}
            for n in notes if n.kind == "assumed"]


def check_strict(notes: Sequence[Any]) -> None:
    """``--strict``: every memory-relevant field must come from a file or a flag (exit 2 naming each)."""
    missing = [n for n in notes if n.kind == "assumed"]
    if missing:
        raise _bad(*[f"--strict: {n.field} was not given ({assumed_line(n)}); set it in a file, with its flag or "
                     f"--set {n.field}=VALUE" for n in missing])


def print_notes(notes: Sequence[Any], quiet: bool) -> None:
    """Importer notes on stderr: each unknown/unsupported key on its own line; ignored keys grouped; each file's
    detected format and every assumed default on their own lines."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for n in notes:
        if n.kind in ("unknown", "unsupported"):
            print(f"warning: {n.source}: {n.key}: {n.kind}: {n.message}", file=sys.stderr)
        elif quiet:
            continue
        elif n.kind == "detected":
            print(f"note: {n.source}: {n.message}", file=sys.stderr)
        elif n.kind == "assumed":
            print(f"note: {assumed_line(n)}", file=sys.stderr)
        elif n.kind == "ignored":
            grouped.setdefault((n.source, n.message), []).append(n.key)
        else:
            print(f"note: {n.source}: {n.key}: {n.message}", file=sys.stderr)
    for (source, message), keys in grouped.items():
        print(f"note: {source}: ignored ({message}): {', '.join(keys)}", file=sys.stderr)


def _loc(loc: Sequence[Any], strip: Sequence[str] = ()) -> str:
    parts = [str(p) for p in loc]
    for prefix in strip:
        if parts and parts[0] == prefix:
            parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_lines(exc: Any, strip: Sequence[str] = ()) -> list[str]:
    return [f"{_loc(e.get('loc', ()), strip)}: {e.get('msg', '')}" for e in exc.errors()]


# ------------------------------------------------------------------------------------------ running


def _validate(body: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from app.core import PlanRequest

    try:
        return PlanRequest.model_validate(body)
    except ValidationError as exc:
        raise _bad(*_validation_lines(exc)) from None


def _post(args: argparse.Namespace, path: str, payload: dict[str, Any], strip: Sequence[str]) -> dict[str, Any]:
    """POST to the server; 422/413 → exit 2 with the named fields; unreachable or failing → exit 3."""
    import httpx

    url = args.url.rstrip("/") + path
    try:
        response = httpx.post(url, json=payload, timeout=args.timeout)
    except httpx.InvalidURL as exc:
        raise _bad(f"--url: invalid URL {args.url!r}: {exc}") from None
    except httpx.TimeoutException:
        raise CliError(EXIT_SERVER, [f"no answer from {url} within {args.timeout:g} s (--timeout)"]) from None
    except httpx.TransportError as exc:
        raise CliError(EXIT_SERVER, [f"cannot reach {url}: {exc or type(exc).__name__}",
                                     "is the server running? start it with `make run`, or drop --url "
                                     "to compute here"]) from None
    if response.status_code in (413, 422):
        try:
            detail = response.json()["detail"]
            lines = [f"{_loc(d.get('loc', ()), strip)}: {d.get('msg', '')}" for d in detail]
        except (ValueError, KeyError, TypeError, AttributeError):
            lines = [f"{url} answered {response.status_code}: {response.text[:500]}"]
        raise _bad(*lines)
    if response.status_code != 200:
        raise CliError(EXIT_SERVER, [f"{url} answered {response.status_code}: {response.text[:500]}"])
    try:
        return response.json()
    except ValueError:
        raise CliError(EXIT_SERVER, [f"{url} answered 200 with something that is not JSON"]) from None


def run_estimate(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """EstimateResult as JSON data, in-process or from ``--url``."""
    if args.url:
        return _post(args, "/api/v1/estimate", body, strip=("body",))
    from app.core import PlanError, estimate
    from app.models.resolve import resolve_request, with_source

    try:
        req, source = resolve_request(_validate(body))  # a Hub id: its config.json (HF_ENDPOINT, HF_TOKEN, cache)
        return with_source(estimate(req), source).model_dump(mode="json")
    except PlanError as exc:
        raise _bad(f"{_loc(exc.loc)}: {exc.message}") from None


def _budget(args: argparse.Namespace) -> int | None:
    if not args.budget:
        return None
    from app.core.fit import parse_budget

    try:
        return parse_budget(args.budget)
    except ValueError as exc:
        raise _bad(f"--budget: {exc}") from None


def run_fit(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """FitResult as JSON data, in-process or from ``--url`` (budget: --budget, else the GPU's VRAM)."""
    budget = _budget(args)
    if args.url:
        payload: dict[str, Any] = {"request": body}
        if args.budget:
            payload["budget"] = args.budget
        return _post(args, "/api/v1/fit", payload, strip=("body", "request"))
    from app.core import PlanError
    from app.core.fit import fit
    from app.models.resolve import resolve_request

    try:
        req = resolve_request(_validate(body))[0]
        return fit(req, budget, "budget" if budget is not None else None).model_dump(mode="json")
    except PlanError as exc:
        raise _bad(f"{_loc(exc.loc)}: {exc.message}") from None


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request with the planner's defaults filled in (for headings); the body itself if it does not validate."""
    from pydantic import ValidationError

    from app.core import PlanRequest

    try:
        return PlanRequest.model_validate(body).model_dump(mode="json")
    except ValidationError:
        return body


# ----------------------------------------------------------------------------------------- commands


def _prepare(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request body, and the defaults it relies on (``--strict``: none allowed)."""
    body, notes = build_body(args)
    print_notes(notes, args.quiet)
    if args.strict:
        check_strict(notes)
    return body, assumed_json(notes)


def cmd_estimate(args: argparse.Namespace) -> int:
    body, assumed = _prepare(args)
    res = run_estimate(args, body)
    print(json.dumps({**res, "assumed": assumed}, indent=2) if args.json else render_estimate(_echo(body), res))
    return EXIT_OK


def cmd_fit(args: argparse.Namespace) -> int:
    body, assumed = _prepare(args)
    res = run_fit(args, body)
    print(json.dumps({**res, "assumed": assumed}, indent=2) if args.json else render_fit(_echo(body), res))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    body, assumed = _prepare(args)
    budget = _budget(args)
    res = run_estimate(args, body)
    req = _echo(body)
    total = res["memory"]["total"]
    if budget is None:
        gpu = req.get("hardware", {}).get("gpu")
        row = next((f for f in res.get("fits", []) if f["gpu"] == gpu), None)
        if row is None:
            raise _bad(f"hardware.gpu: {gpu!r} is not in the answer's GPU list; give --budget")
        budget, source = row["vram_bytes"], f"VRAM of {gpu}"
    else:
        source = f"--budget {args.budget}"
    fits = total <= budget
    if args.json:
        print(json.dumps({"fits": fits, "total_bytes": total, "budget_bytes": budget,
                          "headroom_bytes": budget - total, "peak_bytes": res["memory"]["peak"],
                          "peak_phase": res["peak"]["phase"], "assumed": assumed}, indent=2))
    else:
        head = f"memory.total {gib(total)} ({total:,} bytes) {'<=' if fits else '>'} budget {gib(budget)} " \
               f"({budget:,} bytes, {source})"
        if fits:
            print(f"fits: {head}; {gib(budget - total)} to spare")
        else:
            print(f"does not fit: {head}; short by {gib(total - budget)} ({total - budget:,} bytes)")
        print(f"peak {gib(res['memory']['peak'])} in the {res['peak']['phase']} phase")
    return EXIT_OK if fits else EXIT_NO_FIT


def cmd_export(args: argparse.Namespace) -> int:
    body, _ = _prepare(args)
    try:
        text, notes = export_text(_validate(body), args.format, args.exact)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    print_lines(notes, args.quiet)
    print(text, end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        from app.jobs.worker_cli import main as worker_main

        return worker_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except CliError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `peft-planner ... | head`: stop quietly, as the shell's SIGPIPE convention says
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
