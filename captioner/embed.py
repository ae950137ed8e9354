"""CLIP embeddings through open_clip: images (batched, decoded in parallel) and texts, L2-normalised."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import images
from .images import ImageError, ImageInput
from .models import LoadedModel, ModelError, ModelSpec, resolve_device, resolve_spec, with_fallback
from .settings import Settings

DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class Embedded:
    """Vectors for the inputs that decoded (rows in input order) and the reason for each that did not."""

    vectors: np.ndarray  # [n_ok, dim] float32, unit length
    ok: list[int]  # input positions of the rows
    errors: dict[int, str]  # input position -> reason


def load_embedder(spec_text: str, settings: Settings, fallback: bool = True) -> LoadedModel:
    """Load an open_clip model by spec: NAME/TAG (e.g. ViT-B-32/laion2b_s34b_b79k), hf-hub:ORG/REPO,
    a local-dir:FOLDER (or plain folder) holding open_clip_config.json, or demo."""
    spec = resolve_spec(spec_text, "search", settings)
    return with_fallback(lambda s: load_open_clip(s, settings), spec, settings, fallback, "search model")


def load_open_clip(spec: ModelSpec, settings: Settings) -> LoadedModel:
    import open_clip

    from .models import hub_kwargs, quiet_transformers, resolve_dtype

    quiet_transformers()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    name, pretrained = _open_clip_names(spec)
    if spec.source == "hub" and not spec.text.startswith("hf-hub:"):
        try:
            hub_kwargs(ModelSpec(spec.text, spec.kind, "hub", _weights_repo(name, pretrained), spec.version))
        except ModelError as exc:
            raise ModelError(f"{spec.text}: {exc}") from None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # a hub, file or format problem: all mean "this spec cannot be loaded"
        raise ModelError(f"could not load {spec.text}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from exc
    model = model.to(device=device, dtype=dtype).eval()
    version = spec.version if spec.source != "hub" else (pretrained or "hub")
    return LoadedModel(
        ModelSpec(spec.text, spec.kind, spec.source, spec.location, version), model, _Processor(preprocess, tokenizer),
        device, dtype, family="open_clip",
    )  # fmt: skip


def _open_clip_names(spec: ModelSpec) -> tuple[str, str | None]:
    if spec.source in ("demo", "local", "version"):
        if not (Path(spec.location) / "open_clip_config.json").is_file():
            raise ModelError(f"{spec.text} holds no open_clip_config.json, so it is not an open_clip model folder")
        return f"local-dir:{spec.location}", None
    if spec.text.startswith("hf-hub:"):
        return spec.text, None
    name, _, pretrained = spec.text.partition("/")
    import open_clip

    if name not in open_clip.list_models():
        raise ModelError(f"{spec.text}: {name!r} is not an open_clip model name (e.g. ViT-B-32/laion2b_s34b_b79k)")
    if not pretrained:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ModelError(f"{spec.text} names no pretrained weights; add a tag: {name}/TAG (tags: {tags})")
    return name, pretrained


def _weights_repo(name: str, pretrained: str | None) -> str:
    """The hub repo open_clip would download a NAME/TAG from, to ask the cache for it."""
    import open_clip

    config = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    return (config.get("hf_hub") or f"{name}/{pretrained}").rstrip("/")


@dataclass(frozen=True)
class _Processor:
    """open_clip's image transform and tokenizer under one name, like a transformers processor."""

    preprocess: Callable
    tokenizer: Callable


def image_side(loaded: LoadedModel) -> int:
    """The model's input side, to decode big files no larger than needed."""
    size = getattr(loaded.model.visual, "image_size", 224)
    return max(size) if isinstance(size, (tuple, list)) else int(size)


def embed_images(
    loaded: LoadedModel, inputs: Sequence[ImageInput | Path], batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> Embedded:  # fmt: skip
    """Embed images (given as bytes or as file paths) batch by batch; a bad one is reported by position."""
    import torch

    prepare = partial(_prepare, loaded.processor.preprocess, max(512, 2 * image_side(loaded)))
    vectors, ok, errors, done = [], [], {}, 0
    for batch in images.prefetched(inputs, prepare, batch_size):
        good = [(done + i, pixels) for i, pixels in enumerate(batch) if not isinstance(pixels, ImageError)]
        errors.update({done + i: item.reason for i, item in enumerate(batch) if isinstance(item, ImageError)})
        if good:
            pixels = torch.stack([p for _, p in good]).to(loaded.device, loaded.dtype)
            with loaded.lock, torch.inference_mode():
                features = loaded.model.encode_image(pixels, normalize=True)
            vectors.append(features.float().cpu().numpy())
            ok.extend(i for i, _ in good)
        done += len(batch)
        if on_progress:
            on_progress(done, len(inputs))
    dim = int(loaded.model.text_projection.shape[-1]) if not vectors else vectors[0].shape[1]
    return Embedded(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), ok, errors)


def _prepare(preprocess, max_side: int, item: ImageInput | Path):
    try:
        item = images.read_file(item) if isinstance(item, Path) else item  # files are read in the worker too
        return preprocess(images.decode(item, max_side=max_side).image)
    except ImageError as exc:
        return exc


def embed_texts(loaded: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Unit-length text embeddings, one row per text."""
    import torch

    tokens = loaded.processor.tokenizer(list(texts)).to(loaded.device)
    with loaded.lock, torch.inference_mode():
        features = loaded.model.encode_text(tokens, normalize=True)
    return features.float().cpu().numpy()


def write_open_clip_folder(model, model_cfg: dict, preprocess_cfg: dict, folder: Path) -> None:
    """Save an open_clip local-dir checkpoint: open_clip_config.json, and open_clip_model.safetensors unless
    model is None (a config alone makes open_clip build the architecture with fresh weights)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if model is not None:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(folder / "open_clip_model.safetensors"))
