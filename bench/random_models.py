"""Random-weight chat models at real sizes for the benchmarks (no hub download): BLIP-2 and LLaVA, saved with
save_pretrained so the benchmark loads them through the app's own loading code."""

from __future__ import annotations

from pathlib import Path

SIZES = {
    # OPT-125m-sized language model: what two CPU cores can run in a benchmark
    "small": dict(hidden=768, layers=12, ffn=3072, heads=12, vocab=50272, vision=(384, 6, 6, 1536, 16), qformer=(384, 2)),
    # Salesforce/blip2-opt-2.7b's dimensions: ViT-g/14 vision tower, OPT-2.7b language model
    "opt-2.7b": dict(hidden=2560, layers=32, ffn=10240, heads=32, vocab=50272, vision=(1408, 39, 16, 6144, 14), qformer=(768, 12)),
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
WORDS = "question answer what color is the shape user assistant a an red circle it of".split()


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer as big as the model's vocabulary, so every generated id decodes to a word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    words = specials + WORDS + [f"w{i}" for i in range(vocab_size - len(specials) - len(WORDS))]
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])  # fmt: skip


def build_random(family: str, size: str, folder: Path) -> Path:
    """A random BLIP-2 (OPT) or LLaVA (Llama) of the named size, saved in folder."""
    import torch

    torch.manual_seed(0)
    dims = SIZES[size]
    tokenizer = word_tokenizer(dims["vocab"])
    build = build_blip2 if family == "blip2" else build_llava
    with torch.device("cpu"):
        build(dims, tokenizer, folder)
    return folder


def build_blip2(dims: dict, tokenizer, folder: Path) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    width, depth, heads, ffn, patch = dims["vision"]
    q_width, q_depth = dims["qformer"]
    text = OPTConfig(vocab_size=dims["vocab"], hidden_size=dims["hidden"], num_hidden_layers=dims["layers"],
                     ffn_dim=dims["ffn"], num_attention_heads=dims["heads"], max_position_embeddings=2048,
                     word_embed_proj_dim=dims["hidden"], bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = Blip2Config(
        vision_config=dict(hidden_size=width, intermediate_size=ffn, num_hidden_layers=depth, num_attention_heads=heads,
                           image_size=224, patch_size=patch),
        qformer_config=dict(hidden_size=q_width, intermediate_size=4 * q_width, num_hidden_layers=q_depth,
                            num_attention_heads=12 if q_width % 12 == 0 else 8, encoder_hidden_size=width),
        text_config=text.to_dict(), num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    Blip2ForConditionalGeneration(config).half().save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 224, "width": 224})
    Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=32).save_pretrained(folder)


def build_llava(dims: dict, tokenizer, folder: Path) -> None:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    width, depth, heads, ffn, patch = dims["vision"]
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width, intermediate_size=ffn, num_hidden_layers=depth,
                           num_attention_heads=heads, image_size=224, patch_size=patch, projection_dim=width),
        text_config=dict(model_type="llama", vocab_size=dims["vocab"], hidden_size=dims["hidden"],
                         intermediate_size=dims["ffn"], num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                         num_key_value_heads=dims["heads"], max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    LlavaForConditionalGeneration(config).half().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, chat_template=CHAT_TEMPLATE,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(folder)
