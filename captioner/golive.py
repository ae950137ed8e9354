"""Going live: a captioner checkpoint serves only if it loads and captions the check set (app, CLI, fine-tune)."""

from __future__ import annotations

from pathlib import Path

from . import registry
from .caption import GenerationOptions, caption_images
from .demo.quality import demo_inputs
from .models import LoadedModel, ModelError, load_blip, version_spec
from .settings import Settings

CHECK_IMAGES = 6
CHECK_SEED = 2024


def check_captioner(loaded: LoadedModel, images_count: int = CHECK_IMAGES) -> list[str]:
    """Caption a fixed set of demo-world images; a model that errs or says nothing fails with ModelError."""
    inputs, _ = demo_inputs(images_count, seed=CHECK_SEED)
    try:
        results = caption_images(loaded, inputs, GenerationOptions(num_beams=1, max_new_tokens=20), batch_size=images_count)
    except Exception as exc:  # any failure to caption means the model is not fit to go live
        raise ModelError(f"{loaded.name} ({loaded.version}) failed the check set: {exc}") from exc
    failed = [r for r in results if not r.ok]
    if failed:
        raise ModelError(f"{loaded.name} ({loaded.version}) failed the check set: {failed[0].name}: {failed[0].error}")
    empty = [r.name for r in results if not (r.caption or "").strip()]
    if empty:
        raise ModelError(f"{loaded.name} ({loaded.version}) failed the check set: empty captions for {len(empty)} images")
    return [r.caption for r in results]


def check_folder(folder: Path, settings: Settings, name: str) -> list[str]:
    """Load a written checkpoint folder the way the app will, as version `name`, and caption the check set."""
    return check_captioner(load_blip(version_spec(Path(folder), name), settings))


def activate_checked(settings: Settings, version: str | None, rollback: bool = False) -> None:
    """Make a version live only if it loads and captions the check set (None: back to the default model);
    rollback: it is the one live before (registry.previous_version), and the history winds back to it."""
    if version is not None:
        folder = Path(settings.models_dir) / version
        registry.require_whole(settings.models_dir, version)  # before loading: a half-written folder says what it lacks
        try:
            check_folder(folder, settings, version)
        except ModelError as exc:
            raise registry.RegistryError(f"{version} cannot go live: {exc}") from None
    registry.activate(settings.models_dir, version, rollback=rollback)
