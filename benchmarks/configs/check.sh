#!/usr/bin/env bash
# Check every per-dataset config: the script parses it (`--config FILE --help` exits 0 and
# shows the file's dataset as the default; an unknown key or a bad value exits non-zero),
# and its `dataset:` matches the file name. A file under <algo>/variants/ is another reference's
# whole setting for any dataset (given with --dataset): it must parse and name no dataset.
# Values of a script's CHOICES fields (e.g. reward_scaling) are checked by tests/test_benchmarks.py.
# Run from the project root:
#   bash benchmarks/configs/check.sh [path/to/python]
set -u
python=${1:-python}
failed=0
for dir in benchmarks/configs/*/; do
    algo=$(basename "$dir")
    for file in "$dir"*.yaml; do
        name=$(basename "$file" .yaml)
        if ! grep -qx "dataset: $name" "$file"; then
            echo "FAIL $file: 'dataset: $name' missing"; failed=1; continue
        fi
        if ! help=$(COLUMNS=300 "$python" "algorithms/$algo.py" --config "$file" --help 2>&1); then
            echo "FAIL $file: $(echo "$help" | tail -n 1)"; failed=1; continue
        fi
        if ! grep -q "(default: $name)" <<<"$help"; then
            echo "FAIL $file: --help does not show dataset $name as the default"; failed=1; continue
        fi
        echo "ok   $file"
    done
    for file in "$dir"variants/*.yaml; do
        [[ -e "$file" ]] || continue
        if grep -q "^dataset:" "$file"; then
            echo "FAIL $file: a variant names no dataset (pass --dataset with it)"; failed=1; continue
        fi
        if ! help=$(COLUMNS=300 "$python" "algorithms/$algo.py" --config "$file" --help 2>&1); then
            echo "FAIL $file: $(echo "$help" | tail -n 1)"; failed=1; continue
        fi
        echo "ok   $file"
    done
done
exit $failed
