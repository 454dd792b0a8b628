#!/usr/bin/env bash
# Real English review texts with labels, from a package on PyPI, for measurements that
# need more than the bundled 400 reviews (int8 answer agreement, bf16 accuracy):
#
#   bash scripts/real_reviews.sh [OUT_DIR]      # default runs/real
#
# vaderSentiment 3.3.2's source distribution ships the ICWSM-2014 ground truth of Hutto &
# Gilbert: 10,605 movie-review snippets (Pang & Lee's sentence-polarity sentences), each
# rated by 20 people on -4..4. This writes OUT_DIR/movie_snippets.tsv (columns text, label:
# the sign of the mean rating; the 37 rated exactly 0 are left out, 10,568 remain) and
# OUT_DIR/movie_snippets.txt (the texts alone, one per line). About 2.5 MB is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/real}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  -d "$work" "vaderSentiment==3.3.2"
tar -xzf "$work"/vaderSentiment-3.3.2.tar.gz -C "$work"
tar -xzf "$work"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$work"
"$python" - "$work/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt" "$out" <<'PY'
import csv, os, sys
source, out = sys.argv[1], sys.argv[2]
rows = []
with open(source, encoding='utf-8', newline='') as f:
    for line in f:
        _, rating, text = line.rstrip('\r\n').split('\t')
        if float(rating) != 0:
            rows.append((text.strip(), 'positive' if float(rating) > 0 else 'negative'))
with open(os.path.join(out, 'movie_snippets.tsv'), 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f, delimiter='\t', lineterminator='\n')
    writer.writerow(('text', 'label'))
    writer.writerows(rows)
with open(os.path.join(out, 'movie_snippets.txt'), 'w', encoding='utf-8') as f:
    f.writelines(text + '\n' for text, _ in rows)
print(f'{len(rows)} labelled snippets in {out}/movie_snippets.tsv (texts alone: .txt)')
PY
