"""`models list|activate|rollback`: the fine-tuned captioner versions and which one is live."""

from __future__ import annotations

import json

from .. import registry
from ..settings import Settings
from .common import UserError, say


def cmd_models(args, settings: Settings) -> int:
    """List the versions (answers at once, no torch) or change which one is live (it must pass the check set)."""
    if args.action == "list":
        return list_versions(settings, as_json=args.json)
    from ..golive import activate_checked  # loads torch: only when a version is checked

    try:
        target = args.version if args.action == "activate" else registry.previous_version(settings.models_dir)
        activate_checked(settings, target, rollback=args.action == "rollback")
    except registry.RegistryError as exc:
        raise UserError(str(exc)) from None
    say(f"live: {target or 'the default model (' + settings.caption_model + ')'}")
    return 0


def list_versions(settings: Settings, as_json: bool = False) -> int:
    """* marks the model actually serving; ! a version active.json names that cannot serve; a version whose files
    cannot load says why. 1 when the live model is broken."""
    state = registry.active_state(settings.models_dir)
    versions = registry.list_versions(settings.models_dir)
    problem = state.problem or (state.version and registry.version_problem(settings.models_dir / state.version))
    serving, broken, default = state.version, None, f"default model: {settings.caption_model}"
    if problem:
        broken = state.version
        serving, default, fallback = served_instead(settings)
        say(f"{problem}; {fallback}")
    elif serving is None:
        default = default_served(settings)
    problems = {v.name: registry.version_problem(v.path) for v in versions}
    if as_json:
        print(json.dumps({"live": state.version, "live_problem": problem or None, "serving": serving,
                          "serving_model": None if serving else default,
                          "versions": [_record(v, serving, problems[v.name]) for v in versions]}, indent=2))  # fmt: skip
        return 1 if problem else 0
    print(f"{'':2}{'version':<9}{'created':<27}{'rows':>6}  {'held-out exact before -> after':<32}base")
    for v in versions:
        before, after = v.heldout
        change = _change(before, after)
        mark = "*" if v.name == serving else "!" if v.name == broken else " "
        note = "  (broken)" if mark == "!" else f"  (cannot go live: {problems[v.name]})" if problems[v.name] else ""
        print(f"{mark:2}{v.name:<9}{v.created:<27}{v.rows_used:>6}  {change:<32}{v.base}{note}")
    if serving is None:
        print(f"* {default}")
    return 1 if problem else 0


def _record(version: registry.Version, serving: str | None, problem: str | None) -> dict:
    """One version as `models list --json` gives it."""
    before, after = version.heldout
    return {"version": version.name, "serving": version.name == serving, "problem": problem,
            "created": version.created or None, "base": version.base or None, "rows_used": version.rows_used,
            "heldout_before": before or None, "heldout_after": after or None,
            "new_concepts": version.new_concepts or None, "old_knowledge": version.old_knowledge or None}  # fmt: skip


def _change(before: dict, after: dict) -> str:
    """Held-out exact match before -> after; "none held out" for a run with no held-out set (--heldout-fraction 0);
    "-" for a figure metrics.json does not hold."""
    if before.get("count") == 0 and after.get("count") == 0:
        return "none held out"
    return " -> ".join("-" if side.get("exact_match") is None else str(side["exact_match"]) for side in (before, after))


def default_served(settings: Settings) -> str:
    """What serves when no version is live, by the loading policy's rule, asking the cache and loading nothing: the
    default model; the demo captioner when it is a hub model that cannot be had; nothing when it names no model."""
    from ..models import ModelError, hub_kwargs, resolve_spec

    try:
        spec = resolve_spec(settings.caption_model, "caption", settings)
    except ModelError as exc:  # as loading._demo_instead: only a hub model gives way to the demo
        return f"nothing can serve ({exc})"
    try:
        hub_kwargs(spec)
    except ModelError as exc:
        return f"the demo captioner ({exc})"
    return f"default model: {settings.caption_model}"


def served_instead(settings: Settings) -> tuple[str | None, str, str]:
    """The version the loading policy serves instead of a broken live one (None: a model that is no version), the
    table's line for such a model, and a line saying so."""
    from ..loading import serve  # loads the model: only when active.json or the live version is broken
    from ..models import ModelError

    try:
        served = serve("caption", settings)
    except ModelError as exc:
        return None, "nothing can serve", f"and nothing else can serve: {exc}"
    loaded = served.model
    version = loaded.version if loaded.spec.source == "version" else None
    label = f"{loaded.name} ({loaded.version})"
    return version, label, f"serving {version or label} instead"
