"""Join size-sweep folders from several GPU visits into one table, crossover list and plot.

    python examples/size_sweep/combine.py OUT SWEEP_DIR [SWEEP_DIR ...]

Rows are taken as measured (each point in its own visit's process: ratios are within a point,
never across visits); a (model, precision, batch, seq, decode) point present twice keeps the
later folder's. The settings written are the first folder's, with the list of sources.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qtrace.capture.size_sweep import analyse, size_frame, write_size_outputs


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, sources = Path(argv[0]), [Path(a) for a in argv[1:]]
    rows: dict[tuple, dict] = {}
    settings: dict = {}
    for src in sources:
        data = json.loads((src / "sweep.json").read_text())
        settings = settings or dict(data["settings"])
        for r in data["rows"]:
            r = dict(r, point=f"{src.name}/{r.get('point')}")
            rows[(r["model"], r["precision"], r["batch_size"], r["seq_len"], r.get("decode"))] = r
    settings["combined_from"] = [str(s) for s in sources]
    settings["models"] = list(dict.fromkeys(r["model"] for r in sorted(rows.values(), key=lambda r: r["params"])))
    settings["model"] = ",".join(settings["models"])
    df = size_frame(list(rows.values()))
    found = analyse(df, settings.get("baseline", "fp16"), settings.get("task", "generate"))
    for p in write_size_outputs(df, found, {}, out, settings):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
