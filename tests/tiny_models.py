"""Tiny randomly initialised models of every family the app loads, built like real checkpoints (save_pretrained)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
CORPUS = [
    "a red circle", "a blue square", "a green triangle", "what color is the shape? red", "is it a circle? yes",
    "Question: what is in the picture? Answer: a small dog on the grass near a house.",
    "the quick brown fox jumps over the lazy dog", "user: hello there assistant: hello, how can I help?",
]  # fmt: skip


def bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained here on a few sentences, with <image>, <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    core.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=["<image>"])
    return tokenizer


def build_vqa(folder: Path) -> Path:
    """A tiny BlipForQuestionAnswering with the demo tokenizer."""
    import torch
    from transformers import BlipForQuestionAnswering

    from demo_training.captioner import CaptionRecipe, caption_config, processor_for

    torch.manual_seed(0)
    recipe = CaptionRecipe(image_size=32, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2)
    processor = processor_for(recipe)
    BlipForQuestionAnswering(caption_config(recipe, processor.tokenizer)).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_blip2(folder: Path) -> Path:
    """A tiny BLIP-2 with an OPT language model and a locally trained BPE tokenizer."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                     max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=64),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4).save_pretrained(folder)
    return folder


def build_llava(folder: Path) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama) with a local tokenizer and a chat template."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1).save_pretrained(folder)
    return folder


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_open_clip(config_dir: Path, folder: Path) -> Path:
    """Register a tiny open_clip architecture by name, build it, and save it as a local-dir checkpoint."""
    import json

    import open_clip
    import torch

    from captioner.embed import write_open_clip_folder

    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "TinyTestCLIP.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model = open_clip.create_model("TinyTestCLIP")
    preprocess = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    write_open_clip_folder(model, TINY_CLIP, preprocess, folder)
    return folder
