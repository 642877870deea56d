"""Peak memory of a served request by its number of lumisections, on both MLServer versions.

    python bench/memory.py [--sizes 750 3000 10000] [--no-image]

For each size, a fresh MLServer (parallel_workers 0: the model runs in the server process)
serves the build folder; one request of N LS (DIALS's JSON: flattened INT32 Ring2 and the DCS
flags) is sent, and the server's peak resident memory (VmHWM) is read from /proc. MLServer
parses the whole body before the model sees it, so a request above `max_lumisections` costs
the same memory before it is refused: the last size is max_lumisections + 1, to show it.
The numbers set `Resources` in template.yaml and the memory table of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.app import DEFAULT_MAX_LUMISECTIONS
from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import MODEL_NAME
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.serving.dism import build, mlserver_command
from pixelring2nmf.sim import simulate
from pixelring2nmf.validation.local_server import (
    free_port,
    image_python,
    memory_mb,
    post_infer,
    start_local_server,
    stop_local_server,
)

REPO = Path(__file__).resolve().parents[1]
BLOCK_LS = 750  # maps are made once for a block and repeated: memory does not depend on values
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 900.0


def block_of_maps() -> np.ndarray:
    rng = np.random.default_rng(0)
    occupancy = np.linspace(900, 300, BLOCK_LS)
    expected = simulate.expected_maps(simulate.default_detector(), occupancy)
    return insert_cross(simulate.sample_maps(expected, rng)).astype(np.int32)


def request_body(n_ls: int, block: np.ndarray) -> bytes:
    """DIALS's JSON for n_ls LS, assembled from the block's text (no 80 M Python ints)."""
    per_ls = [json.dumps(m.ravel().tolist())[1:-1] for m in block]
    data = ",".join(per_ls[i % BLOCK_LS] for i in range(n_ls))
    flags = ",".join(["true"] * n_ls)
    inputs = [
        f'{{"name": "Ring2", "shape": [{n_ls}, 140, 56], "datatype": "INT32", "data": [{data}]}}'
    ]
    inputs += [
        f'{{"name": "oms_lumisection_info__{flag}", "shape": [{n_ls}], "datatype": "BOOL", '
        f'"data": [{flags}]}}'
        for flag in DCS_FLAGS
    ]
    return ('{"inputs": [' + ", ".join(inputs) + "]}").encode()


def measure(python: Path | None, folder: Path, n_ls: int, body: bytes, tmp: Path) -> dict:
    port = free_port()
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(json.dumps({**settings, "http_port": port}))
    command = mlserver_command(folder, python) if python else mlserver_command(folder)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(tmp)}
    server = start_local_server(
        command, port, tmp / f"server-{n_ls}.log", cwd=tmp, env=env, timeout_s=START_TIMEOUT_S
    )
    try:
        idle = memory_mb(server.process.pid)["VmRSS"]
        seconds, response = post_infer(server, MODEL_NAME, body, REQUEST_TIMEOUT_S)
        peak = memory_mb(server.process.pid)["VmHWM"]
    finally:
        stop_local_server(server)
    return {
        "n_ls": n_ls,
        "body_mb": len(body) / 1e6,
        "status": response.status_code,
        "idle_mb": idle,
        "peak_mb": peak,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[750, 3000, DEFAULT_MAX_LUMISECTIONS]
    )
    parser.add_argument("--no-image", action="store_true", help="only the main environment")
    args = parser.parse_args()
    sizes = [*args.sizes, DEFAULT_MAX_LUMISECTIONS + 1]
    environments: list[tuple[str, Path | None]] = [("MLServer 1.7 (main)", None)]
    image = image_python(REPO)
    if not args.no_image and image.exists():
        environments.append(("MLServer 1.5.0 (image)", image))
    block = block_of_maps()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["BUILD_PATH"] = str(tmp / "build")
        (folder,) = build(REPO / "template.yaml").values()
        for n_ls in sizes:
            body = request_body(n_ls, block)
            for label, python in environments:
                row = {"environment": label, **measure(python, folder, n_ls, body, tmp)}
                rows.append(row)
                print(
                    f"{label:24s} {n_ls:6d} LS  body {row['body_mb']:6.0f} MB  "
                    f"HTTP {row['status']}  idle {row['idle_mb']:5.0f} MB  "
                    f"peak {row['peak_mb']:6.0f} MB  {row['seconds']:5.1f} s",
                    flush=True,
                )
            del body
    lines = [
        "Peak resident memory of the server process (VmHWM) for one request of N LS, a fresh",
        "server per request (`parallel_workers: 0`), the shipped model, flattened INT32 maps and",
        f"the 8 DCS flags. The last size is `max_lumisections` + 1 ({DEFAULT_MAX_LUMISECTIONS}"
        " + 1): MLServer parses the whole body",
        "before the model can refuse it. Reproduce: `python bench/memory.py`.",
        "",
        "| environment | LS | body (MB) | HTTP | idle RSS (MB) | peak RSS (MB) | peak per 1000 LS (MB) | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_1000 = (row["peak_mb"] - row["idle_mb"]) / row["n_ls"] * 1000
        lines.append(
            f"| {row['environment']} | {row['n_ls']} | {row['body_mb']:.0f} | {row['status']} | "
            f"{row['idle_mb']:.0f} | {row['peak_mb']:.0f} | {per_1000:.0f} | {row['seconds']:.1f} |"
        )
    write_section("memory", "Memory per request (bench/memory.py)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
