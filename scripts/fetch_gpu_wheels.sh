#!/usr/bin/env bash
# Download the wheels of scripts/gpu_wheels.txt for the GPU machine (CPython 3.12, manylinux x86-64) into a folder
# (default .whl/, git-ignored), on a machine with network access. Each is fetched without its dependencies; what each
# one requires is printed so that a missing one can be added to the list. Carry the folder to the GPU machine and run
# scripts/gpu_suite.sh there (its deps phase installs them with pip --no-index).
#
#   bash scripts/fetch_gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
list=scripts/gpu_wheels.txt
python="${PYTHON:-python3}"
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
grep -vE '^\s*(#|$)' "$list" | while read -r spec; do
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$dest" "$spec"
done
for wheel in "$dest"/*.whl; do
  echo "$(basename "$wheel"): requires $(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' \
    | grep -v 'extra ==' | sed 's/^Requires-Dist: //' | paste -sd ',' - || true)"
done
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
