"""Fine-tuning speed: rows/s and peak memory of this project's LoRA training against full fine-tuning.

    python bench/finetune_speed.py                                              # CPU, the demo captioner
    python bench/finetune_speed.py --config ../shared/blip-base --device cuda   # real BLIP size, random weights

Both ways run the same training loop (finetune.trainer.train) on the same rows; LoRA trains the adapters
and the caption words' token rows, full fine-tuning every weight. Each way runs in its own process so that
its peak memory (RSS on the CPU, allocated CUDA memory on a GPU) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="build this BLIP architecture with random weights instead of demo")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, help="override the fine-tuning default")
    parser.add_argument("--way", choices=["lora", "full"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def write_rows(folder: Path, n: int) -> None:
    from captioner.demo.quality import demo_inputs

    inputs, samples = demo_inputs(n, seed=1, shapes=("circle", "square", "triangle", "star"))
    rows = []
    for item, truth in zip(inputs, samples):
        (folder / item.name).write_bytes(item.data)
        rows.append({"path": str(folder / item.name), "caption": truth.caption, "sha256": item.sha256})
    (folder / "rows.json").write_text(json.dumps(rows))


def run_way(args) -> dict:
    import torch

    from finetune.config import FinetuneConfig
    from finetune.data import Example, to_dataset
    from finetune.trainer import train, with_lora

    rows = json.loads((args.data / "rows.json").read_text())
    examples = to_dataset([Example(Path(r["path"]), r["caption"], r["sha256"], False) for r in rows])
    model, processor = load_model(args)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, augment=False)
    if args.lora_dropout is not None:
        cfg.lora_dropout = args.lora_dropout
    if args.way == "lora":
        model = with_lora(model, processor.tokenizer, examples["caption"], cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    stats = train(model, processor, examples, cfg, None)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows_per_s": len(examples) * stats["epochs"] / seconds, "seconds": seconds, "peak_bytes": peak,
            "trainable": trainable, "last_loss": stats["last_loss"]}  # fmt: skip


def load_model(args):
    from captioner.models import load_captioner
    from captioner.settings import Settings

    if not args.config:
        loaded = load_captioner("demo", Settings(home=Path.cwd(), device=args.device, dtype="float32"), fallback=False)
        return loaded.model, loaded.processor
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration(BlipConfig.from_pretrained(args.config)).to(args.device)
    return model, BlipProcessor.from_pretrained(args.config)


def main():
    args = parse_args()
    if args.way:
        print(json.dumps(run_way(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write_rows(Path(folder), args.rows)
        for way in ("lora", "full"):
            command = [sys.executable, __file__, "--way", way, "--data", folder, "--device", args.device,
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]  # fmt: skip
            if args.config:
                command += ["--config", str(args.config)]
            if args.lora_dropout is not None:
                command += ["--lora-dropout", str(args.lora_dropout)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"{way} failed:\n{done.stderr[-3000:]}")
            results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    model = args.config or "demo captioner"
    print(f"{model} on {args.device}; {args.rows} rows x {args.epochs} epochs, batch {args.batch_size}; "
          f"peak memory is {'allocated CUDA memory' if args.device == 'cuda' else 'process RSS'}")  # fmt: skip
    print(f"{'way':<34}{'rows/s':>9}{'peak MiB':>10}{'trainable':>12}{'final loss':>12}")
    names = {"lora": "captioner LoRA (+ word token rows)", "full": "full fine-tuning"}
    for way, r in results.items():
        print(f"{names[way]:<34}{r['rows_per_s']:>9.1f}{r['peak_bytes'] / 2**20:>10.0f}{r['trainable']:>12,}{r['last_loss']:>12.4f}")
    print(f"LoRA: {results['lora']['rows_per_s'] / results['full']['rows_per_s']:.2f}x the rows/s, "
          f"{results['lora']['peak_bytes'] / results['full']['peak_bytes']:.2f}x the peak memory of full fine-tuning")


if __name__ == "__main__":
    main()
