"""The demo models' WordPiece vocabulary: bert-base-uncased's, trimmed to its most frequent entries."""

from __future__ import annotations

from pathlib import Path

from .world import ALL_COLORS, ALL_SHAPES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
DEMO_WORDS = ["a", "what", "color", "is", "the", "shape", "it", "yes", "no", *ALL_COLORS, *ALL_SHAPES]
FIRST_CHAR_ID, FIRST_WORD_ID = 999, 1996  # bert-base-uncased: single characters, then words by frequency


def trim_bert_vocab(bert_vocab: list[str], size: int = 8192) -> list[str]:
    """Keep every single character (bare and ##) so any text still tokenizes, then the most frequent words."""
    chars = bert_vocab[FIRST_CHAR_ID:FIRST_WORD_ID]
    pieces = [t for t in bert_vocab if t.startswith("##") and len(t) == 3]
    kept = SPECIALS + chars + pieces
    seen = set(kept)
    for token in [w for w in DEMO_WORDS if w in bert_vocab] + bert_vocab[FIRST_WORD_ID:]:
        if len(kept) >= size:
            break
        if token not in seen and not token.startswith("[unused"):
            kept.append(token)
            seen.add(token)
    return kept


def build_tokenizer(bert_vocab_file: Path, out_dir: Path, size: int = 8192):
    """Write the trimmed tokenizer (vocab + BLIP's [DEC] start token) to out_dir and return it."""
    from transformers import BertTokenizer

    vocab = trim_bert_vocab(bert_vocab_file.read_text(encoding="utf-8").splitlines(), size)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=64,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer
