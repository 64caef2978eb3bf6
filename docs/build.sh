#!/usr/bin/env bash
# Build the documentation (Sphinx, warnings are errors) and execute every notebook.
#
#   bash docs/build.sh             # both (what CI runs)
#   bash docs/build.sh docs        # only the HTML, into docs/_build/html
#   bash docs/build.sh notebooks   # only the notebooks (nbmake, 300 s each at most)
#
# Uses .venv/bin when it exists (as `make` creates it), else the tools on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=''
if [[ -x .venv/bin/python ]]; then bin=.venv/bin/; fi
what=${1:-all}
case $what in all | docs | notebooks) ;; *)
    echo "usage: bash docs/build.sh [all|docs|notebooks], not '$what'" >&2
    exit 2
    ;;
esac

if [[ $what != notebooks ]]; then
    "${bin}python" -m sphinx -W --keep-going -q -b html docs docs/_build/html
    echo "docs: docs/_build/html/index.html"
fi

if [[ $what != docs ]]; then
    failed=()
    for notebook in notebooks/*.ipynb; do
        start=$SECONDS
        # nbmake executes the notebook in a fresh kernel (from the notebook's folder);
        # `timeout` bounds the whole notebook, --nbmake-timeout each cell.
        if timeout 300 "${bin}python" -m pytest --nbmake "$notebook" \
            -p no:cacheprovider --nbmake-timeout=300 -q --no-header; then
            echo "$notebook: passed in $((SECONDS - start)) s"
        else
            echo "$notebook: FAILED after $((SECONDS - start)) s" >&2
            failed+=("$notebook")
        fi
    done
    if ((${#failed[@]})); then
        echo "failed notebooks: ${failed[*]}" >&2
        exit 1
    fi
fi
