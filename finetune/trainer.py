"""LoRA training of a BLIP captioner on rows kept on the device: new words' token rows trainable too, batches
mixed from new and old knowledge, old rows held close to the live model (self-distillation), no per-step host sync."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .config import FinetuneConfig
from .progress import note
from .tensors import RowTensors

# LoRA goes on every linear layer of the text decoder (self- and cross-attention query/key/value, their outputs,
# the feed-forward and LM-head dense layers); "all" adds the vision tower's attention (qkv, projection).
TEXT_TARGETS = ["query", "key", "value", "dense"]
VISION_TARGETS = ["qkv", "projection"]
# Each training view is scaled by a zoom drawn from this range (below 1: the picture shrinks inside a border of
# its own edge pixels) and moved at random. On the demo world a zoom of 1 to 1.25 cost 2-5 points of old
# knowledge; 0.7 to 1.3 kept it within a point and taught stars from fewer examples (bench/learning_loop.py).
ZOOM = (0.7, 1.3)
CHECK_EVERY = 20  # steps between host syncs: progress, and the NaN/inf check of the losses since the last one


class TrainingError(RuntimeError):
    """Training could not finish; the message says why and what to try."""


@dataclass
class Progress:
    """Reports steps to tqdm and, for the admin page, as JSON lines to a file."""

    total: int
    file: Path | None = None

    def __post_init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="step", desc="fine-tuning", disable=None)

    def steps(self, done: int, loss: float, epoch: int, count: int) -> None:
        self.bar.update(count)
        self.bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
        self.note({"phase": "train", "step": done, "steps": self.total, "loss": loss, "epoch": epoch})

    def note(self, record: dict) -> None:
        note(self.file, record)

    def close(self) -> None:
        self.bar.close()


def new_word_ids(tokenizer, new_captions: list[str], old_captions: list[str]) -> list[int]:
    """Token ids of the corrections' words that no old caption uses: rows the live model may never have produced.
    Words it already says stay as they are, so learning "star" cannot move "circle"."""

    def ids(captions):
        return {i for caption in captions for i in tokenizer(caption, add_special_tokens=False).input_ids}

    return sorted(ids(new_captions) - ids(old_captions) - set(tokenizer.all_special_ids))


def adapted_layers(model, cfg: FinetuneConfig) -> list:
    """The linear layers LoRA adapts, matched by name as peft matches target_modules."""
    import torch

    targets = TEXT_TARGETS + (VISION_TARGETS if cfg.lora_targets == "all" else [])
    return [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets]  # fmt: skip


def check_rank(model, cfg: FinetuneConfig) -> None:
    """TrainingError naming --lora-r when it exceeds the narrowest adapted layer: past that a rank adds parameters
    (and memory) and no capacity, as a layer's update can have no higher rank than its own width."""
    widths = [min(layer.in_features, layer.out_features) for layer in adapted_layers(model, cfg)]
    if widths and cfg.lora_r > min(widths):
        raise TrainingError(f"--lora-r {cfg.lora_r} is more than the width of the narrowest layer it adapts ({min(widths)} in "
                            f"this model): a higher rank adds memory and no capacity; use at most --lora-r {min(widths)}")  # fmt: skip


def with_lora(model, tokenizer, tensors: RowTensors, cfg: FinetuneConfig):
    """The base model wrapped with LoRA adapters and trainable rows for the corrections' new words (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    new = [e.caption for e in tensors.examples if not e.is_old]
    old = [e.caption for e in tensors.examples if e.is_old]
    words = new_word_ids(tokenizer, new, old)
    targets = TEXT_TARGETS + (VISION_TARGETS if cfg.lora_targets == "all" else [])
    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        trainable_token_indices={"word_embeddings": words} if words else None,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)  # LoRA's initial weights: the same run gives the same model
    return get_peft_model(model, config)


def batch_plan(old: list[bool], steps: int, batch_size: int, old_share: float, seed: int):
    """Row indices for every step, [steps, batch_size], drawn up front from a seeded CPU generator: each batch
    takes its old rows (the live model's knowledge) last, so that the teacher sees only those columns.
    Returns (plan, old columns)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    new_rows = [i for i, is_old in enumerate(old) if not is_old]
    old_rows = [i for i, is_old in enumerate(old) if is_old]
    if not new_rows or not old_rows or old_share <= 0:
        take_old = batch_size if not new_rows else 0
        groups = [(list(range(len(old))), batch_size)]
    else:
        take_old = min(batch_size - 1, max(1, round(batch_size * old_share)))
        groups = [(new_rows, batch_size - take_old), (old_rows, take_old)]

    def stream(rows: list[int], count: int):
        passes = -(-count // len(rows))
        order = torch.cat([torch.tensor(rows)[torch.randperm(len(rows), generator=generator)] for _ in range(passes)])
        return order[:count]

    plan = torch.cat([stream(rows, steps * width).view(steps, width) for rows, width in groups], dim=1)
    return plan, take_old


@contextlib.contextmanager
def bf16_frozen_weights(model, enabled: bool):
    """On a GPU, train against bf16 copies of the frozen linear weights (half the memory and traffic) and put
    the full-precision ones back afterwards, so the merged model is not rounded. Embeddings (tied to the LM
    head and patched by the trainable token rows) and the trainable parameters stay as they are."""
    import torch

    if not enabled:
        yield
        return
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    kept = {}
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            for param in module.parameters(recurse=False):
                if not param.requires_grad and id(param) not in embeddings and param.dtype == torch.float32:
                    kept[param] = param.data
                    param.data = param.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for param, data in kept.items():
            param.data = data


def augment(pixels, flip, zoom, shift):
    """Each picture mirrored (flip), scaled by zoom and moved by shift (in [-1, 1] of the room the zoom leaves
    on each axis). Old rows are judged against the live model on the same view, so a view the live model
    never saw still anchors what it knew."""
    import torch
    import torch.nn.functional as F

    window = 1 / zoom
    theta = torch.zeros(len(pixels), 2, 3, device=pixels.device)
    theta[:, 0, 0] = torch.where(flip, -window, window)
    theta[:, 1, 1] = window
    theta[:, :, 2] = shift * (1 - window)[:, None]
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(pixels.dtype)


def forward(trained, model, pixels, input_ids, attention, old: slice | None, shared_vision: bool):
    """The trained model's logits for the batch and, when old is given, the live model's (adapters off) for
    the old rows. With the vision tower frozen, both read the image features of one pass through it."""
    import torch

    if not shared_vision:
        logits = trained(pixel_values=pixels, input_ids=input_ids, attention_mask=attention).logits
        if old is None:
            return logits, None
        with torch.no_grad(), model.disable_adapter():
            return logits, model(pixel_values=pixels[old], input_ids=input_ids[old], attention_mask=attention[old]).logits
    blip = model.get_base_model()
    image = blip.vision_model(pixel_values=pixels).last_hidden_state
    logits = blip.text_decoder(input_ids=input_ids, attention_mask=attention, encoder_hidden_states=image).logits
    if old is None:
        return logits, None
    with torch.no_grad(), model.disable_adapter():
        teacher = blip.text_decoder(input_ids=input_ids[old], attention_mask=attention[old], encoder_hidden_states=image[old])
    return logits, teacher.logits


def distillation_loss(student, teacher, labels):
    """Mean KL(teacher || student) over the caption's positions: keeps every word's probability, not only the
    top one, where the live model had it."""
    import torch.nn.functional as F

    mask = labels[:, 1:] != -100
    teacher_log = F.log_softmax(teacher[:, :-1].float(), dim=-1)
    student_log = F.log_softmax(student[:, :-1].float(), dim=-1)
    per_token = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def train(model, tensors: RowTensors, cfg: FinetuneConfig, progress_file: Path | None, bf16: bool) -> dict:
    """Train the LoRA model in place on the rows; returns loss statistics. bf16: frozen weights and matmuls in
    bf16 (the GPU path). Stops with TrainingError on a NaN/inf loss or CUDA out-of-memory."""
    import torch
    import torch.nn.functional as F
    from transformers import get_cosine_schedule_with_warmup

    device = tensors.pixels.device
    accelerator = _accelerator()
    rows = len(tensors)
    steps = cfg.steps_for(rows)
    epochs = max(1, round(steps * cfg.batch_size / rows))  # passes over the rows, as the progress shows them
    plan, old_columns = batch_plan(tensors.old.tolist(), steps, cfg.batch_size, cfg.old_share, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    flips = torch.rand(plan.shape, generator=generator) < 0.5
    zooms = ZOOM[0] + torch.rand(plan.shape, generator=generator) * (ZOOM[1] - ZOOM[0])
    shifts = torch.rand((*plan.shape, 2), generator=generator) * 2 - 1
    rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    share = slice(rank, None, processes)  # each process: its share of every batch
    plan, flips, zooms, shifts = (t[:, share].to(device) for t in (plan, flips, zooms, shifts))
    distill = cfg.distill > 0 and old_columns > 0 and processes == 1
    old = slice(plan.shape[1] - old_columns, None)  # the batch columns that hold old rows
    shared_vision = cfg.lora_targets == "text" and accelerator is None  # a frozen vision tower: one pass serves both
    smoothing = getattr(model.config.text_config, "label_smoothing", 0.0) or 0.0

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0, fused=device.type == "cuda" or None)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, min(20, steps // 10)), steps)
    losses = torch.zeros(steps, device=device)
    progress = Progress(steps, progress_file)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with bf16_frozen_weights(model, bf16):
        trained, optimizer = accelerator.prepare(model, optimizer) if accelerator else (model, optimizer)
        trained.train()
        try:
            for step in range(steps):
                pixels, input_ids, attention, labels, _ = tensors.rows(plan[step])
                if cfg.augment:
                    pixels = augment(pixels, flips[step] & tensors.flippable[plan[step]], zooms[step], shifts[step])
                with autocast:
                    logits, teacher = forward(trained, model, pixels, input_ids, attention, old if distill else None, shared_vision)
                loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                                       label_smoothing=smoothing)  # fmt: skip
                if distill:
                    loss = loss + cfg.distill * distillation_loss(logits[old], teacher, labels[old])
                if accelerator:
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(parameters, 1.0)
                else:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses[step] = loss.detach()
                if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                    _check(losses, step, steps, cfg, progress, epochs)
        except torch.cuda.OutOfMemoryError:
            smallest = 2 if cfg.old_share > 0 else 1  # the least a batch of new and old rows can be (config.validate)
            advice = (f"try --batch-size {max(smallest, cfg.batch_size // 2)}" if cfg.batch_size > smallest
                      else "even the smallest batch does not fit on this GPU")  # fmt: skip
            raise TrainingError(f"CUDA ran out of memory with --batch-size {cfg.batch_size}; {advice}") from None
        finally:
            progress.close()
    model.eval()
    values = losses.tolist()
    return {"epochs": epochs, "steps": steps, "first_loss": values[0], "last_loss": sum(values[-10:]) / len(values[-10:])}


def distributed() -> bool:
    """Started by `accelerate launch` (or torchrun) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _accelerator():
    """accelerate's DDP wrapper when several processes train; a single process needs none (and so never
    pins the process-wide accelerate state to one device)."""
    if not distributed():
        return None
    from accelerate import Accelerator

    return Accelerator()


def _check(losses, step: int, steps: int, cfg: FinetuneConfig, progress: Progress, epochs: int) -> None:
    """The one host sync of a stretch of steps: stop on a NaN/inf loss, report progress."""
    import math

    start = step + 1 - ((step % CHECK_EVERY) + 1)
    window = losses[start : step + 1].tolist()
    for offset, value in enumerate(window):
        if not math.isfinite(value):
            raise TrainingError(
                f"the loss became {value} at step {start + offset + 1} of {steps}; nothing was published "
                f"(try a lower --lr than {cfg.lr})"
            )
    progress.steps(step + 1, window[-1], min(epochs, 1 + (step * epochs) // steps), len(window))
