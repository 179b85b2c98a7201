"""Write src/nextbest/schemas/asyncapi.json from docs/asyncapi.yaml: `make asyncapi`.

The document `nextbest api` serves at /asyncapi.json, with every schema file
inlined (see nextbest.schemas.bundle). A unit test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from nextbest.schemas.bundle import bundle

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "docs/asyncapi.yaml"
TARGET = REPO / "src/nextbest/schemas/asyncapi.json"


def render() -> str:
    document = yaml.safe_load(SOURCE.read_text("utf-8"))
    return json.dumps(bundle(document), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text("utf-8") != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run `make asyncapi`", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    TARGET.write_text(text, "utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
