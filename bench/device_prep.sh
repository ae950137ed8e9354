#!/usr/bin/env bash
# Run here, before a GPU session: fills .device/ (git-ignored) with what bench/device_check.sh needs on the
# device machine, which has torch, transformers, peft and pytest but not these: pytest-timeout (pytest.ini's
# addopts need it), open_clip + ftfy + wcwidth, faiss-cpu as wheels for its Python 3.12; pycocoevalcap's
# bleu/cider folders (its wheel is 104 MB); BLIP-base's config (from ../shared/blip-base, or BLIP_BASE=DIR).
# With `quantized`, bitsandbytes' wheel (43 MB) too: carry that in a call of its own (64 MiB per call).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .device/wheels .device/site
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$@"
}
download .device/wheels open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 faiss-cpu==1.15.1 pytest-timeout==2.4.0
site=$("$PY" -c "import pycocoevalcap; print(list(pycocoevalcap.__path__)[0])")  # a namespace package
rm -rf .device/site/pycocoevalcap && mkdir -p .device/site/pycocoevalcap
cp -r "$site/bleu" "$site/cider" .device/site/pycocoevalcap/
find .device/site -name __pycache__ -prune -exec rm -rf {} +
blip=${BLIP_BASE:-../shared/blip-base}  # every CUDA bench but chat and index builds its BLIP from this config
if [ ! -f "$blip/config.json" ]; then echo "no BLIP-base config in $blip: set BLIP_BASE=DIR" >&2; exit 1; fi
rm -rf .device/blip-base && cp -r "$blip" .device/blip-base && chmod -R u+w .device/blip-base  # (the shared copy is read-only)
if [ "${1:-}" = quantized ]; then mkdir -p .device/bnb && download .device/bnb bitsandbytes==0.50.2; fi
du -sh .device/* && echo "carry: .device (and .device/bnb only in a call of its own)"
