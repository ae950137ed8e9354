"""Model specs -> loaded models: the one resolver, device/dtype/quantization, and cache keys."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import endpoint, registry
from .settings import DEFAULT_CAPTION_MODEL, Settings

DEMO, ACTIVE = "demo", "active"
ENDPOINT_FAMILY = "openai"  # LoadedModel.family of a model served by an OpenAI-compatible server
HUB_HOST = "huggingface.co"
DEMO_MODELS_DIR = Path(__file__).parent / "demo" / "models"  # the embedded demo models, one folder per kind


class ModelError(RuntimeError):
    """A model spec that cannot be resolved or loaded; the message names the spec and the reason."""


class SpecError(ModelError):
    """A spec that names no model at all (a typo): never stood in for by the demo model, unlike one not at hand."""


@dataclass(frozen=True)
class ModelSpec:
    """A model spec resolved to where its files are and which version they are."""

    text: str  # as the user wrote it
    kind: str  # caption | qa | search | style
    source: str  # hub | local | demo | version | endpoint
    location: str  # hub id, an absolute folder, or the model name on the server
    version: str


def resolve_spec(text: str, kind: str, settings: Settings) -> ModelSpec:
    """Turn a spec string (hub id, folder, demo, active) into a ModelSpec, without loading anything."""
    text = (text or "").strip()
    if not text:
        raise ModelError(f"empty {kind} model spec")
    if text.startswith(endpoint.PREFIX):
        if kind not in ("qa", "style"):
            raise ModelError(f"{text}: an OpenAI-compatible server can chat and rewrite captions, not serve {kind}")
        name = text.removeprefix(endpoint.PREFIX).strip()
        return ModelSpec(text, kind, "endpoint", name, endpoint.host(settings.openai_base_url))
    if text == DEMO:
        folder = demo_model_dir(kind)
        return ModelSpec(text, kind, "demo", str(folder), _demo_version(folder))
    if text == ACTIVE:
        if kind != "caption":
            raise ModelError(f"'active' names a captioning model version; it is not a {kind} model")
        state = registry.active_state(settings.models_dir)
        if state.problem:
            raise ModelError(state.problem)
        if state.version is None:
            return resolve_spec(default_caption_spec(settings), kind, settings)
        if not (settings.models_dir / state.version).is_dir():
            raise ModelError(f"models/active.json names version {state.version}, which is missing from {settings.models_dir}")
        return version_spec(settings.models_dir / state.version, state.version, text)
    path = Path(text.removeprefix("local-dir:")).expanduser()
    if not path.is_absolute() and not path.exists() and (settings.home / path).is_dir():
        path = settings.home / path  # models/v0001, as the hint below and model cards name a version, from any folder
    if path.is_dir():
        return ModelSpec(text, kind, "local", str(path.resolve()), path.resolve().name)
    if _looks_like_path(text) or text.startswith("local-dir:"):
        raise ModelError(f"model folder {text!r} does not exist")
    return ModelSpec(text, kind, "hub", text, "hub")


def version_spec(folder: Path, version: str, text: str | None = None) -> ModelSpec:
    """A captioner version folder (models/vNNNN, or a candidate being published) as a spec named text or version."""
    return ModelSpec(text or version, "caption", "version", str(Path(folder)), version)


def demo_model_dir(kind: str) -> Path:
    """The folder of the embedded demo model of a kind (caption, qa, search, style)."""
    return DEMO_MODELS_DIR / kind


def live_caption_spec(settings: Settings) -> str:
    """What captions now: the version models/active.json names (or says nothing readable about), else the default."""
    state = registry.active_state(settings.models_dir)
    return ACTIVE if state.version or state.problem else settings.caption_model


def default_caption_spec(settings: Settings) -> str:
    """The captioner when no version is live: CAPTIONER_CAPTION_MODEL (the BLIP base model if that says 'active')."""
    return settings.caption_model if settings.caption_model != ACTIVE else DEFAULT_CAPTION_MODEL


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def _demo_version(folder: Path) -> str:
    try:
        return json.loads((folder / "demo.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"the embedded demo model in {folder} is missing; run `python -m captioner demo build`") from None


# --- device, dtype, quantization -----------------------------------------------------------------
def resolve_device(name: str = "auto", source: str = "CAPTIONER_DEVICE"):
    """auto -> cuda, then mps, then cpu; an explicit device that is not there is a clear error naming its source."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{source}={name} asks for a CUDA GPU, but none is available (auto or cpu work here)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"{source}={name} asks for Apple MPS, but it is not available (auto or cpu work here)")
    return device


def resolve_dtype(name: str, device, source: str = "CAPTIONER_DTYPE"):
    """auto -> bf16 where the GPU supports it, else fp16 on a GPU, fp32 on the CPU."""
    import torch

    if name != "auto":
        dtype = getattr(torch, name)
        if device.type == "cpu" and dtype == torch.float16:
            raise ModelError(f"{source}=float16 is not supported on the CPU; use float32 or bfloat16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def check_quantization(quantize: str, device) -> None:
    """8bit/4bit run only on CUDA through bitsandbytes; anywhere else it is a clear error."""
    if quantize in ("none", "", None):
        return
    if device.type != "cuda":
        raise ModelError(f"quantization {quantize!r} needs a CUDA GPU (bitsandbytes); this device is {device.type}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(f"quantization {quantize!r} needs bitsandbytes: pip install bitsandbytes") from None


def quantization_config(quantize: str):
    """The transformers BitsAndBytesConfig for 8bit/4bit, or None."""
    if quantize in ("none", "", None):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")


# --- loading ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model with its processor, where it runs, and a lock: one generate at a time on a shared model."""

    spec: ModelSpec
    model: Any
    processor: Any
    device: Any
    dtype: Any
    quantize: str = "none"
    family: str = ""  # the transformers class it was loaded as
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def name(self) -> str:
        return self.spec.text


def cache_key(spec: ModelSpec, settings: Settings) -> tuple:
    """What makes two loads the same model: spec, version, device, dtype and quantization."""
    return (spec.kind, spec.text, spec.location, spec.version, settings.device, settings.dtype, settings.quantize)


def load_captioner(spec_text: str, settings: Settings) -> LoadedModel:
    """Load exactly this BLIP captioner spec (see resolve_spec); ModelError if it cannot be. Fallbacks: loading.serve."""
    return load_blip(resolve_spec(spec_text, "caption", settings), settings)


def load_blip(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """A BLIP captioning checkpoint (BlipForConditionalGeneration) with its processor."""

    def check(config) -> str:
        if config.model_type != "blip":
            raise ModelError(f"{spec.text} is a {config.model_type!r} model; the captioner runs BLIP checkpoints")
        if "BlipForQuestionAnswering" in (config.architectures or []):
            raise ModelError(f"{spec.text} is a BLIP question-answering model, not a captioner")
        return "BlipForConditionalGeneration"

    return load_model(spec, settings, check)


def load_chat_model(spec_text: str, settings: Settings) -> LoadedModel:
    """Load exactly this Q&A / chat spec: BLIP VQA, BLIP-2, a chat-template vision-language model, or openai:MODEL."""
    return load_chat_model_at(resolve_spec(spec_text, "qa", settings), settings)


def load_endpoint(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """A model on an OpenAI-compatible server (OPENAI_BASE_URL, OPENAI_API_KEY), checked before it is used."""
    try:
        server = endpoint.connect(spec.location, settings.openai_base_url, settings.openai_api_key, settings.openai_timeout)
    except endpoint.EndpointError as exc:
        raise ModelError(f"{spec.text}: {exc}") from None
    return LoadedModel(spec, server, None, None, None, family=ENDPOINT_FAMILY)


def load_style_model(spec_text: str, settings: Settings) -> LoadedModel:
    """Load exactly this caption rewriter spec: openai:MODEL, a local transformers chat model (hub id or folder), or demo."""
    return load_style_at(resolve_spec(spec_text, "style", settings), settings)


def load_style_at(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """A text chat model with a chat template (in-process or on a server) to rewrite captions."""
    if spec.source == "endpoint":
        return load_endpoint(spec, settings)

    def choose(config) -> str:
        if getattr(config, "is_encoder_decoder", False) or hasattr(config, "vision_config"):
            raise ModelError(f"{spec.text} is a {config.model_type!r} model; the rewriter needs a text chat model")
        return "AutoModelForCausalLM"

    loaded = load_model(spec, settings, choose)
    if not getattr(loaded.processor, "chat_template", None):
        raise ModelError(f"{spec.text} has no chat template, so it cannot follow a style instruction")
    return loaded


def load_chat_model_at(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """The chat backend a checkpoint's config (or an openai: spec) calls for, loaded with its processor."""
    if spec.source == "endpoint":
        return load_endpoint(spec, settings)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as IMAGE_TEXT_TO_TEXT

    def choose(config) -> str:
        if config.model_type == "blip":
            if "BlipForQuestionAnswering" in (config.architectures or []):
                return "BlipForQuestionAnswering"
            raise ModelError(f"{spec.text} is a BLIP captioning model; chat needs a BLIP VQA model (e.g. Salesforce/blip-vqa-base)")
        if config.model_type == "blip-2":
            return "Blip2ForConditionalGeneration"
        if config.model_type in IMAGE_TEXT_TO_TEXT:
            return "AutoModelForImageTextToText"
        raise ModelError(f"{spec.text} is a {config.model_type!r} model, which cannot answer questions about images")

    loaded = load_model(spec, settings, choose)
    if loaded.family == "AutoModelForImageTextToText" and not getattr(loaded.processor, "chat_template", None):
        raise ModelError(f"{spec.text} has no chat template in its processor, so it cannot hold a conversation")
    return loaded


def load_model(spec: ModelSpec, settings: Settings, choose_class: Callable[[Any], str]) -> LoadedModel:
    """Load any transformers checkpoint: choose_class(config) names the model class (or raises ModelError)."""
    import transformers

    quiet_transformers()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    check_quantization(settings.quantize, device)
    kwargs = hub_kwargs(spec)
    _check_checkpoint_folder(spec)
    try:
        config = transformers.AutoConfig.from_pretrained(spec.location, **kwargs)
        family = choose_class(config)
        quant = quantization_config(settings.quantize)
        placement = {"quantization_config": quant, "device_map": {"": device}} if quant else {}
        model = getattr(transformers, family).from_pretrained(spec.location, dtype=dtype, **placement, **kwargs)
        processor = transformers.AutoProcessor.from_pretrained(spec.location, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # a hub, file or format problem: all mean "this spec cannot be loaded"
        label = spec.text if spec.source in ("hub", "local") else f"{spec.text} ({spec.version})"
        raise ModelError(f"could not load {label}: {_short(exc)}") from exc
    if quant is None:
        model.to(device)
    model.eval()
    if spec.source == "hub":
        commit = getattr(config, "_commit_hash", None)
        spec = ModelSpec(spec.text, spec.kind, spec.source, spec.location, commit[:12] if commit else "hub")
    return LoadedModel(spec, model, processor, device, dtype, settings.quantize, family=family)


def _check_checkpoint_folder(spec: ModelSpec) -> None:
    """A ModelError naming what a folder without config.json is (transformers would ask for a key in a file that
    is not there): an open_clip model, or no save_pretrained checkpoint at all."""
    folder = Path(spec.location)
    if not folder.is_dir() or (folder / "config.json").is_file():
        return
    if (folder / "open_clip_config.json").is_file():
        raise ModelError(f"{spec.text} is an open_clip model, a search model (local-dir:{spec.text}), not a {spec.kind} model")
    raise ModelError(f"{spec.text} holds no config.json: it is not a save_pretrained checkpoint")


def free_memory() -> None:
    """Return memory of models nobody holds any more (GPU memory included) right away."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def quiet_transformers() -> None:
    """Keep transformers' and the hub client's progress bars, advice and retries out of the CLI's stderr and the
    server log: what failed is said once, by the error that names the spec."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def hub_kwargs(spec: ModelSpec) -> dict:
    """Offline (no cache and no network) must fail in a moment, not after the hub client's retries."""
    if spec.source != "hub":
        return {}
    offline = hub_offline_reason()
    if offline:
        if not _in_hub_cache(spec.location):
            hint = ""
            if re.fullmatch(r"v\d{4,}", spec.location):  # a version's name, given where a spec is asked for
                hint = f" (a fine-tuned version is `active`, or its folder: models/{spec.location})"
            raise ModelError(f"{spec.location} is not in the local Hugging Face cache and {offline}{hint}")
        return {"local_files_only": True}
    return {}


def hub_offline_reason() -> str | None:
    """Why the hub cannot be asked (HF_HUB_OFFLINE set, or its endpoint not answering), or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):  # huggingface_hub's truths
        return "HF_HUB_OFFLINE is set (offline)"
    if not hub_reachable():
        host, port = hub_address()
        return f"{host}:{port} cannot be reached (offline)"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def hub_address() -> tuple[str, int]:
    """The host and port the hub client talks to: HF_ENDPOINT's (a mirror, often on a port of its own), else the hub's."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "").strip() or f"https://{HUB_HOST}")
    try:
        port = endpoint.port
    except ValueError:  # a port that is no number: the hub client fails on it too, and says so
        port = None
    return endpoint.hostname or HUB_HOST, port or (80 if endpoint.scheme == "http" else 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (at HF_ENDPOINT's host and port if set)."""
    try:
        socket.create_connection(hub_address(), timeout=timeout).close()
        return True
    except OSError:
        return False


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
