"""The captioning process: ``python -m core.captions REQUEST_JSON`` (see core/captions/process.py)."""

from __future__ import annotations

import json
import sys

from core.captions.job import caption_dataset
from core.captions.process import CaptionRequest
from core.errors import UserError


def main(argv: list[str]) -> int:
    """Caption as the request says, one JSON event a line on stdout; 2 with one sentence on a user error."""
    from core.captions.runtime import load

    fields = json.loads(argv[0])

    def emit(event: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        request = CaptionRequest(**{**fields, "exclude": tuple(fields.get("exclude") or ())})
        caption_dataset(request.dataset, request.captioner, load, request.model, request.prompt, batch_size=request.batch_size, emit=emit, tags=request.tags())
    except UserError as exc:
        print(f"sdtui: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
