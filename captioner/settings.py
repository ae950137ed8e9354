"""The one Settings object: every knob of the app, read from CAPTIONER_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_QA_MODEL = "Salesforce/blip-vqa-base"
DEFAULT_SEARCH_MODEL = "ViT-B-32/laion2b_s34b_b79k"
DEFAULT_CHAT_MODELS = (DEFAULT_QA_MODEL, "Salesforce/blip2-opt-2.7b", "HuggingFaceTB/SmolVLM-256M-Instruct", "demo")
DEFAULT_STYLE_MODEL = "HuggingFaceTB/SmolLM2-360M-Instruct"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "8bit", "4bit")


# every CAPTIONER_* variable the app reads (from_env); the test suite's own start with CAPTIONER_TEST_
VARIABLES = tuple(f"CAPTIONER_{name}" for name in (
    "HOME", "CAPTION_MODEL", "QA_MODEL", "SEARCH_MODEL", "CHAT_MODELS", "GALLERY", "GALLERY_FOLLOW_LINKS", "DEVICE",
    "DTYPE", "QUANTIZE", "ADMIN_PASSWORD", "STYLE_MODEL", "OPENAI_TIMEOUT",
))  # fmt: skip


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """A line for each CAPTIONER_* variable that is set but read by nothing (a typo: CAPTIONER_DEVICES=cpu left
    the device on auto without a word), with the setting it probably meant."""
    import difflib

    env = os.environ if env is None else env
    notes = []
    for name in sorted(env):
        if name.startswith("CAPTIONER_") and name not in VARIABLES and not name.startswith("CAPTIONER_TEST_"):
            close = difflib.get_close_matches(name[10:], [known[10:] for known in VARIABLES], n=1, cutoff=0.7)
            hint = f" (did you mean CAPTIONER_{close[0]}?)" if close else f"; the settings are {', '.join(VARIABLES)}"
            notes.append(f"{name} is not a setting and is ignored{hint}")
    return notes


class SettingsError(ValueError):
    """A CAPTIONER_* variable holds a value the app cannot use."""


@dataclass(frozen=True)
class Settings:
    """Where the data lives and which models run where."""

    home: Path
    caption_model: str = DEFAULT_CAPTION_MODEL
    qa_model: str = DEFAULT_QA_MODEL
    search_model: str = DEFAULT_SEARCH_MODEL
    chat_models: tuple[str, ...] = DEFAULT_CHAT_MODELS
    gallery: Path | None = None
    gallery_follow_links: bool = False  # index and serve files that symbolic links in the gallery lead to elsewhere
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    admin_password: str | None = None
    style_model: str = DEFAULT_STYLE_MODEL
    openai_base_url: str | None = None  # OPENAI_BASE_URL: the server `openai:MODEL` specs talk to
    openai_api_key: str | None = field(default=None, repr=False)  # OPENAI_API_KEY: never printed
    openai_timeout: float = 60.0

    def __post_init__(self):
        if not 0 < self.openai_timeout < float("inf"):  # inf or nan would never time out, or never wait
            raise SettingsError(f"CAPTIONER_OPENAI_TIMEOUT={self.openai_timeout!r} must be a number of seconds above 0")
        _check("CAPTIONER_DEVICE", self.device, DEVICES, allow_index=True)
        _check("CAPTIONER_DTYPE", self.dtype, DTYPES)
        _check("CAPTIONER_QUANTIZE", self.quantize, QUANTIZATIONS)
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if self.home.exists() and not self.home.is_dir():  # a folder not there yet is made by the first write
            raise SettingsError(f"CAPTIONER_HOME={self.home} is a file, not a folder")
        gallery = Path(self.gallery).expanduser() if self.gallery else Path("data/gallery")
        object.__setattr__(self, "gallery", gallery if gallery.is_absolute() else self.home / gallery)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from CAPTIONER_* variables; unset or empty ones take their defaults."""
        env = os.environ if env is None else env

        def get(name: str, default):
            value = env.get(f"CAPTIONER_{name}", "").strip()
            return value or default

        return cls(
            home=Path(get("HOME", ".")),
            caption_model=get("CAPTION_MODEL", DEFAULT_CAPTION_MODEL),
            qa_model=get("QA_MODEL", DEFAULT_QA_MODEL),
            search_model=get("SEARCH_MODEL", DEFAULT_SEARCH_MODEL),
            chat_models=tuple(s.strip() for s in get("CHAT_MODELS", ",".join(DEFAULT_CHAT_MODELS)).split(",") if s.strip()),
            gallery=get("GALLERY", None),
            gallery_follow_links=_flag("CAPTIONER_GALLERY_FOLLOW_LINKS", get("GALLERY_FOLLOW_LINKS", "0")),
            device=get("DEVICE", "auto").lower(),
            dtype=get("DTYPE", "auto").lower(),
            quantize=get("QUANTIZE", "none").lower(),
            admin_password=env.get("CAPTIONER_ADMIN_PASSWORD") or None,
            style_model=get("STYLE_MODEL", DEFAULT_STYLE_MODEL),
            openai_base_url=env.get("OPENAI_BASE_URL", "").strip() or None,
            openai_api_key=env.get("OPENAI_API_KEY", "").strip() or None,
            openai_timeout=_seconds("CAPTIONER_OPENAI_TIMEOUT", get("OPENAI_TIMEOUT", "60")),
        )

    @property
    def chat_choices(self) -> list[str]:
        """The Q&A model first, then the other configured chat models, then demo; each once."""
        return list(dict.fromkeys([self.qa_model, *self.chat_models, "demo"]))

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def feedback_csv(self) -> Path:
        return self.data_dir / "feedback.csv"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def no_log_note(self) -> str | None:
        """Why a reader finds no feedback at all, when the log's file is not there (a mistyped CAPTIONER_HOME, or a
        command run from another folder: the current one is the default); None when it is."""
        if self.feedback_csv.exists():
            return None
        return f"{self.feedback_csv} does not exist: nothing is logged under CAPTIONER_HOME={self.home}"


def _seconds(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number of seconds") from None


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} is not one of 1, 0 (or true, false)")


def _check(name: str, value: str, allowed: tuple[str, ...], allow_index: bool = False) -> None:
    base = value.split(":", 1)[0] if allow_index else value
    index_ok = not allow_index or ":" not in value or (base == "cuda" and value.split(":", 1)[1].isdigit())
    if base not in allowed or not index_ok:
        extra = " (or cuda:N)" if allow_index else ""
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}{extra}")
