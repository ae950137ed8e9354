"""CLIP embeddings through open_clip: images (decoded on the model's device, encoding overlapped) and texts,
L2-normalised in fp32."""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import images
from .gpu_images import PixelBatch, PixelSpec, load_pixels
from .images import ImageError, ImageInput
from .models import (
    LoadedModel, ModelError, ModelSpec, SpecError, hub_kwargs, quiet_transformers, resolve_device, resolve_dtype,
    resolve_spec,
)  # fmt: skip
from .settings import Settings

DEFAULT_BATCH_SIZE = 64
TEXT_CACHE_SIZE = 256
_TEXT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> text -> unit vector
_TEXT_CACHE_LOCK = threading.Lock()
IMAGE_QUERY_CACHE_SIZE = 64
_IMAGE_QUERY_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> image sha256 -> unit vector


@dataclass(frozen=True)
class Embedded:
    """Vectors for the inputs that decoded (rows in input order) and the reason for each that did not."""

    vectors: np.ndarray  # [n_ok, dim] float32, unit length
    ok: list[int]  # input positions of the rows
    errors: dict[int, str]  # input position -> reason


def load_embedder(spec_text: str, settings: Settings) -> LoadedModel:
    """Load exactly this open_clip spec: NAME/TAG (e.g. ViT-B-32/laion2b_s34b_b79k), hf-hub:ORG/REPO,
    a local-dir:FOLDER (or plain folder) holding open_clip_config.json, or demo. Fallbacks: loading.serve."""
    return load_open_clip(resolve_spec(spec_text, "search", settings), settings)


def load_open_clip(spec: ModelSpec, settings: Settings) -> LoadedModel:
    import open_clip

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
        raise SpecError(f"{spec.text}: {name!r} is not an open_clip model name (e.g. ViT-B-32/laion2b_s34b_b79k)")
    if not pretrained:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise SpecError(f"{spec.text} names no pretrained weights; add a tag: {name}/TAG (tags: {tags})")
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


def pixel_spec(loaded: LoadedModel) -> PixelSpec | None:
    """How the model wants its pixels, for the device image path; None for a transform it does not reproduce."""
    try:
        return PixelSpec.from_open_clip(loaded.processor.preprocess)
    except ValueError:
        return None


def default_batch_size(loaded: LoadedModel) -> int:
    return 256 if loaded.device.type == "cuda" else DEFAULT_BATCH_SIZE


def embed_images(
    loaded: LoadedModel, inputs: Iterable[ImageInput | Path], batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_vectors: Callable[[list[int], np.ndarray], None] | None = None,
) -> Embedded:  # fmt: skip
    """Embed images (bytes or file paths, any iterable) batch by batch: the next batches are read, decoded and
    preprocessed on the model's device (gpu_images) while this one is encoded. A bad one is reported by position;
    on_vectors gets each batch's input positions and vectors as soon as they are made."""
    import torch

    batch_size = batch_size or default_batch_size(loaded)
    total = len(inputs) if hasattr(inputs, "__len__") else 0
    prepare = partial(_prepare_batch, loaded, pixel_spec(loaded))
    vectors, ok, errors, done = [], [], {}, 0
    for (count, batch), in images.prefetched(_batches(inputs, batch_size), prepare, batch_size=1, workers=2):
        errors.update({done + i: error.reason for i, error in batch.errors.items()})
        if batch.ok:
            pixels = batch.pixels
            if pixels.device.type == "cuda":  # made on the decoder's stream, used on this one
                pixels.record_stream(torch.cuda.current_stream(pixels.device))
            with loaded.lock, torch.inference_mode():
                features = loaded.model.encode_image(pixels)
            vectors.append(unit_rows(features).cpu().numpy())
            ok.extend(done + i for i in batch.ok)
            if on_vectors:
                on_vectors([done + i for i in batch.ok], vectors[-1])
        done += count
        if on_progress:
            on_progress(done, total)
    dim = vectors[0].shape[1] if vectors else embedding_dim(loaded)
    return Embedded(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), ok, errors)


def embedding_dim(loaded: LoadedModel) -> int:
    """The length of the model's vectors: a CLIP's text projection tells it; other towers (SigLIP, EVA) are asked."""
    projection = getattr(loaded.model, "text_projection", None)
    if projection is not None and hasattr(projection, "shape"):  # a Linear, None or no attribute at all: ask
        return int(projection.shape[-1])
    return len(embed_texts(loaded, [""])[0])


def unit_rows(features):
    """L2-normalised rows in fp32, whatever dtype the model ran in (bf16 norms are off by 1e-3)."""
    import torch

    return torch.nn.functional.normalize(features.float(), dim=-1)


def _batches(inputs: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in inputs:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prepare_batch(loaded: LoadedModel, spec: PixelSpec | None, batch: list) -> tuple[int, PixelBatch]:
    """Read (paths), decode and preprocess one batch, in a worker thread: the device path, or open_clip's own
    transform on the door's pictures when its transform is one the device path does not reproduce."""
    read: list[ImageInput | ImageError] = []
    for item in batch:
        try:
            read.append(images.read_file(item) if isinstance(item, Path) else item)
        except ImageError as exc:
            read.append(exc)
    good = [i for i, item in enumerate(read) if not isinstance(item, ImageError)]
    errors = {i: item for i, item in enumerate(read) if isinstance(item, ImageError)}
    if spec is not None:
        pixels = load_pixels([read[i] for i in good], spec, loaded.device, loaded.dtype)
    else:
        pixels = _door_pixels(loaded, [read[i] for i in good])
    errors.update({good[j]: error for j, error in pixels.errors.items()})
    return len(batch), PixelBatch(pixels.pixels, [good[j] for j in pixels.ok], errors)


def _door_pixels(loaded: LoadedModel, inputs: list[ImageInput]) -> PixelBatch:
    import torch

    def one(item: ImageInput):
        try:
            return loaded.processor.preprocess(images.decode(item, max_side=max(512, 2 * image_side(loaded))).image)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(min(8, os.cpu_count() or 2), thread_name_prefix="door") as pool:
        done = list(pool.map(one, inputs))
    ok = [i for i, item in enumerate(done) if not isinstance(item, ImageError)]
    side = image_side(loaded)
    stacked = torch.stack([done[i] for i in ok]) if ok else torch.zeros((0, 3, side, side))
    errors = {i: item for i, item in enumerate(done) if isinstance(item, ImageError)}
    return PixelBatch(stacked.to(loaded.device, loaded.dtype), ok, errors)


def embed_texts(loaded: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Unit-length text embeddings, one row per text (normalised in fp32). The last TEXT_CACHE_SIZE texts of
    each model are remembered: a page rerun with the same query does not encode it again."""
    import torch

    with _TEXT_CACHE_LOCK:
        cache = _TEXT_CACHE.setdefault(loaded.model, OrderedDict())
        known = {text: cache[text] for text in texts if text in cache}
    todo = list(dict.fromkeys(text for text in texts if text not in known))
    if todo:
        tokens = loaded.processor.tokenizer(todo).to(loaded.device)
        with loaded.lock, torch.inference_mode():
            features = _text_features(loaded.model, tokens)
        known.update(zip(todo, unit_rows(features).cpu().numpy()))
    with _TEXT_CACHE_LOCK:
        for text in texts:
            cache[text] = known[text]
            cache.move_to_end(text)
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
    dim = embedding_dim(loaded) if not texts else len(known[texts[0]])
    return np.stack([known[text] for text in texts]) if texts else np.zeros((0, dim), np.float32)


def embed_query_image(loaded: LoadedModel, source: ImageInput) -> np.ndarray:
    """One image's unit vector, remembered for the model's last IMAGE_QUERY_CACHE_SIZE query images: a page rerun
    (another page of results, another cut-off) neither decodes nor encodes a 20-megapixel photo again."""
    with _TEXT_CACHE_LOCK:
        cache = _IMAGE_QUERY_CACHE.setdefault(loaded.model, OrderedDict())
        vector = cache.get(source.sha256)
    if vector is None:
        embedded = embed_images(loaded, [source])
        if embedded.errors:
            raise ImageError(source.name, embedded.errors[0])
        vector = embedded.vectors[0]
    with _TEXT_CACHE_LOCK:
        cache[source.sha256] = vector
        cache.move_to_end(source.sha256)
        while len(cache) > IMAGE_QUERY_CACHE_SIZE:
            cache.popitem(last=False)
    return vector


def text_is_cut(loaded: LoadedModel, text: str) -> bool:
    """Whether the model reads only the start of this text: more words after it would not change its tokens."""
    tokenize = loaded.processor.tokenizer
    return bool((tokenize([text.strip()]) == tokenize([text.strip() + " and more"])).all())


def _text_features(model, tokens):
    """model.encode_text, computed over the tokens up to the last end-of-text only when that is exact: a causal
    text tower pooled at the end-of-text token never looks past it, and a short query then costs a few
    positions instead of the whole context (77 for ViT-B-32)."""
    import open_clip
    import torch

    pool = getattr(model, "text_pool_type", None)
    if not isinstance(model, open_clip.CLIP) or getattr(model, "attn_mask", None) is None or pool != "argmax":
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = open_clip.transformer.text_global_pool(x, tokens, pool)
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


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
