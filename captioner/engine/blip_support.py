"""Which BLIP models and settings the fast decoder reproduces exactly, and the generate settings it must mirror."""

from __future__ import annotations

import copy

from ..options import GenerationOptions

# Settings the fast decoder honours itself (the rest of this module names what it does not).
HONOURED = {"num_beams", "max_new_tokens", "min_new_tokens", "repetition_penalty", "length_penalty", "early_stopping"}
# Settings that never change which tokens come out here: bookkeeping, outputs, ids BLIP sets itself, lengths that the
# always-passed max/min_new_tokens override, and knobs that only act when sampling or with an assistant model.
NEUTRAL = {
    "max_length", "min_length", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "use_cache", "cache_config", "max_cache_len", "output_attentions", "output_hidden_states",
    "output_scores", "output_logits", "return_dict_in_generate", "transformers_version", "compile_config",
    "disable_compile", "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "assistant_ensemble_weight", "max_matching_ngram_size",
    "speculation_type", "prefill_chunk_size",
}  # fmt: skip
SAMPLING_ONLY = {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}


def generate_kwargs(model, options: GenerationOptions) -> dict:
    """The settings captioner/caption.py passes to BLIP's generate for these options (prompt ids aside)."""
    kwargs = dict(
        num_beams=options.num_beams,
        max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens,
        repetition_penalty=float(options.repetition_penalty),
    )
    if getattr(model.generation_config, "min_length", 0):
        kwargs["min_length"] = 0  # a checkpoint's own minimum would override the one asked for
    return kwargs


def effective_config(model, options: GenerationOptions):
    """The GenerationConfig BLIP's text decoder generates with: its own config, then generate's arguments."""
    text = model.config.text_config
    config = copy.deepcopy(model.text_decoder.generation_config)
    # setattr, not update(): update() validates and would log advice about flags on every request
    passed = dict(generate_kwargs(model, options), eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id)
    for key, value in passed.items():
        setattr(config, key, value)
    return config


def search_settings(config) -> tuple[float, bool | str]:
    """length_penalty and early_stopping as beam search reads them (unset means 1.0 and False)."""
    length_penalty = 1.0 if config.length_penalty is None else float(config.length_penalty)
    early_stopping = False if config.early_stopping is None else config.early_stopping
    return length_penalty, early_stopping


def unsupported_reason(model, options: GenerationOptions) -> str | None:
    """Why the fast path cannot promise generate's tokens for this model and these options; None when it can."""
    try:
        options.validate()
    except ValueError as exc:
        return f"invalid options: {exc}"
    problem = _model_problem(model)
    if problem:
        return problem
    config = effective_config(model, options)
    problems = _config_problems(config, options)
    problems += _top_level_problems(model, config)
    return "; ".join(problems) or None


def _model_problem(model) -> str | None:
    from transformers import BlipForConditionalGeneration

    if type(model) is not BlipForConditionalGeneration:
        return f"the fast decoder runs BlipForConditionalGeneration, not {type(model).__name__}"
    if model.training:
        return "the model is in training mode (dropout would change every step)"
    text = model.config.text_config
    if not text.is_decoder or text.sep_token_id is None or text.bos_token_id is None or text.pad_token_id is None:
        return "the text config lacks is_decoder or a bos/sep/pad token id"
    if isinstance(text.sep_token_id, (list, tuple)):
        return "the text config names several end-of-sequence (sep) tokens"
    foreign = sorted({_kind(module) for module in model.modules() if not _known(module)})
    if foreign:
        return f"the model holds layers the fast decoder does not run: {', '.join(foreign[:4])} (quantized or adapter layers)"
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return "the model has forward hooks (e.g. offloading or adapters) that the fast decoder would skip"
    params = list(model.parameters())
    devices = {p.device for p in params}
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        return f"the model's weights are spread over {sorted(map(str, devices))}; the fast decoder needs one device"
    if len(dtypes) != 1:
        return f"the model mixes weight dtypes {sorted(map(str, dtypes))}"
    head = model.text_decoder.cls.predictions.decoder
    if head.bias is None:
        return "the language-model head has no bias"
    return None


def _kind(module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def _known(module) -> bool:
    """Plain torch layers and BLIP's own classes; anything else (LoRA, bitsandbytes) may compute differently."""
    name = type(module).__module__
    return (
        name.startswith("torch.nn.modules")
        or name.startswith("transformers.models.blip.")
        or name == "transformers.activations"
    )


def _neutral(key: str, value, defaults: dict) -> bool:
    return value is None or value == defaults.get(key)


def _config_problems(config, options: GenerationOptions) -> list[str]:
    from transformers import GenerationConfig

    defaults = GenerationConfig._get_default_generation_params()
    problems = []
    sampling = bool(config.do_sample)
    if sampling:
        problems.append("the checkpoint's generation config samples (do_sample=True)")
    for key, value in config.to_dict().items():
        if key.startswith("_") or key in HONOURED or key == "do_sample":
            continue
        if key in NEUTRAL and not (sampling and key in SAMPLING_ONLY):
            continue
        if not _neutral(key, value, defaults):
            problems.append(f"the checkpoint's generation config sets {key}={value!r}")
    length_penalty, early_stopping = search_settings(config)
    if early_stopping not in (True, False, "never"):
        problems.append(f"early_stopping={early_stopping!r} is not True, False or 'never'")
    return problems


def _top_level_problems(model, config) -> list[str]:
    """Settings in generation_config.json that BLIP's generate may or may not hand to its text decoder.

    transformers 5.x generates with text_decoder.generation_config, which from_pretrained builds from the text
    config, not from generation_config.json. A file that disagrees on something that changes tokens is ambiguous.
    """
    from transformers import GenerationConfig

    defaults = GenerationConfig._get_default_generation_params()
    overridden = {"num_beams", "max_new_tokens", "min_new_tokens", "repetition_penalty", "max_length", "min_length"}
    problems = []
    for key, value in model.generation_config.to_dict().items():
        if key.startswith("_") or key in overridden or key in NEUTRAL:
            continue
        mine = getattr(config, key, None)
        same = value == mine or (_neutral(key, value, defaults) and _neutral(key, mine, defaults))
        if not same:
            problems.append(f"generation_config.json sets {key}={value!r} but the text decoder generates with {mine!r}")
    return problems
