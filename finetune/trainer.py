"""LoRA training of a BLIP captioner through accelerate, with the correction words' token rows trainable too."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from captioner import images

from .config import FinetuneConfig

# The vision tower's attention (qkv, projection) and every linear layer of the text decoder (self- and
# cross-attention query/key/value, their outputs, the feed-forward and LM-head dense layers). Adapting the
# vision MLPs too (fc1, fc2) taught the demo no more and cost about a quarter more activation memory.
LORA_TARGETS = ["qkv", "projection", "query", "key", "value", "dense"]


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

    def step(self, done: int, loss: float, epoch: int) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
        self.note({"phase": "train", "step": done, "steps": self.total, "loss": loss, "epoch": epoch})

    def note(self, record: dict) -> None:
        if self.file:
            with open(self.file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"time": time.time(), **record}) + "\n")

    def close(self) -> None:
        self.bar.close()


def new_word_ids(tokenizer, captions: list[str]) -> list[int]:
    """Token ids of every word in the training captions: rows the base model may never have produced."""
    ids = {i for caption in captions for i in tokenizer(caption, add_special_tokens=False).input_ids}
    return sorted(ids - set(tokenizer.all_special_ids))


def with_lora(model, tokenizer, captions: list[str], cfg: FinetuneConfig):
    """The base model wrapped with LoRA adapters and trainable rows for the correction words."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout, target_modules=LORA_TARGETS,
        trainable_token_indices={"word_embeddings": new_word_ids(tokenizer, captions)},
    )  # fmt: skip
    return get_peft_model(model, config)


class _Pictures:
    """The training datasets.Dataset as torch sees it: each image decoded through the image door,
    preprocessed, and flipped at random when augmenting."""

    def __init__(self, dataset, processor, augment: bool, seed: int):
        self.dataset, self.processor, self.augment, self.rng = dataset, processor, augment, random.Random(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        from PIL import ImageOps

        row = self.dataset[index]
        picture = images.decode(images.read_file(Path(row["image_path"])), max_side=768).image
        if self.augment and self.rng.random() < 0.5:
            picture = ImageOps.mirror(picture)
        pixels = self.processor.image_processor(images=picture, return_tensors="pt")["pixel_values"][0]
        return pixels, row["caption"]


def _collate(processor):
    def collate(batch):
        import torch

        encoded = processor.tokenizer([caption for _, caption in batch], padding="longest", return_tensors="pt")
        input_ids = encoded.input_ids.clone()
        input_ids[:, 0] = processor.tokenizer.bos_token_id or input_ids[0, 0]  # BLIP's decoder starts at [DEC]
        labels = input_ids.masked_fill(encoded.attention_mask == 0, -100)  # no loss on padding
        return torch.stack([p for p, _ in batch]), input_ids, encoded.attention_mask, labels

    return collate


def train(model, processor, dataset, cfg: FinetuneConfig, progress_file: Path | None) -> dict:
    """Train in place on a datasets.Dataset of (image_path, caption) rows; returns loss statistics.
    Stops with TrainingError on a NaN/inf loss or CUDA out-of-memory."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    loader = DataLoader(
        _Pictures(dataset, processor, cfg.augment, cfg.seed), batch_size=cfg.batch_size, shuffle=True,
        collate_fn=_collate(processor), num_workers=0 if len(dataset) < 512 else 2,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    epochs = cfg.epochs_for(len(dataset))
    steps = epochs * len(loader)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, min(20, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    model.train()
    progress, done, losses = Progress(steps, progress_file), 0, []
    try:
        for epoch in range(1, epochs + 1):
            for pixels, input_ids, attention, labels in loader:
                loss = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention, labels=labels).loss
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {done + 1} of {steps}; nothing was published "
                        f"(try a lower --lr than {cfg.lr})"
                    )
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1
                losses.append(loss.item())
                progress.step(done, losses[-1], epoch)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"CUDA ran out of memory with --batch-size {cfg.batch_size}; try --batch-size {max(1, cfg.batch_size // 2)}") from None
    finally:
        progress.close()
    model.eval()
    return {"epochs": epochs, "steps": steps, "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:])}
