"""CLI glue for ``sae1n browse``: parse arguments, call :func:`sae1n.browse.app.serve`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sae1n.cliutil import option


def configure_browse(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "exp_dir",
        type=Path,
        metavar="EXP_DIR",
        help="the SAE experiment folder, output/sae/<exp> (analysis/, encoded_features/, evaluation/)",
    )
    option(
        p,
        "--slides",
        type=Path,
        default=None,
        help="folder holding the slide files <slide_id>.<ext> (default: slides.dir of the run's "
        "pipeline.yaml; slides without a file are shown as a blank canvas under the overlays)",
    )
    option(
        p,
        "--annotations",
        type=Path,
        default=None,
        help="folder of <slide_id>.xml (ASAP) or .geojson annotations to outline, tumour minus "
        "exclusions (default: annotations.dir of the run's pipeline.yaml)",
    )
    option(p, "--port", type=int, default=8765, help="TCP port to listen on (default: 8765)")
    option(
        p,
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, the loopback address: this machine only; any other address "
        "lets others on the network see the slides and edit the notes, and prints a warning)",
    )


def run_browse(args) -> int:
    from sae1n.browse.app import serve

    serve(
        args.exp_dir,
        slides_dir=args.slides,
        annotations_dir=args.annotations,
        host=args.host,
        port=args.port,
    )
    return 0
