"""The ``trustlab`` command: parses arguments and calls the documented Python API.

Exit codes: 0 success, 1 a policy rule failed, 2 bad input (spec, data, checkpoint, names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustlab.errors import TrustlabError

EXIT_OK, EXIT_POLICY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trustlab.train.trainer import TrainSettings, train

    settings = TrainSettings(epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                             batch_size=args.batch_size, optimizer=args.optimizer)
    trained = train(args.arch, args.dataset, settings=settings, out=args.out,
                    dataset_path=args.data_path)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in trained.metrics.items() if k.startswith("test"))
    Console().print(f"saved {args.out}: {metrics}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from trustlab.audit.demo import run_demo

    run_demo(args.store, quick=args.quick, seed=args.seed)
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from trustlab.audit.store import ReportStore

    table = Table(title=f"runs in {args.store}")
    for column in ("run_id", "created", "name", "arch", "dataset", "status"):
        table.add_column(column)
    for row in ReportStore(args.store).list_runs(limit=args.limit):
        table.add_row(*(str(row[c]) for c in ("run_id", "created", "name", "arch", "dataset",
                                              "status")))
    Console().print(table)
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from trustlab.dashboard.launch import launch

    return launch(args.store, port=args.port, address=args.address)


def build_parser() -> argparse.ArgumentParser:
    from trustlab.train.data import available_datasets
    from trustlab.train.zoo import available_archs

    parser = argparse.ArgumentParser(prog="trustlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a zoo model and write a checkpoint")
    train.add_argument("--arch", required=True, help=f"one of {', '.join(available_archs())}")
    train.add_argument("--dataset", required=True,
                       help=f"one of {', '.join(available_datasets())}")
    train.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    train.add_argument("--epochs", type=int, help="default: the architecture's default")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    train.add_argument("--data-path", type=Path,
                       help="original source files instead of the bundled copies")
    train.set_defaults(handler=_cmd_train)

    demo = commands.add_parser("demo", help="train the reference zoo, audit it, fill the store")
    demo.add_argument("--store", type=Path, default=Path("store"))
    demo.add_argument("--quick", action="store_true", help="two models, two epochs (for tests)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_cmd_demo)

    runs = commands.add_parser("runs", help="list the runs in a report store")
    runs.add_argument("--store", type=Path, default=Path("store"))
    runs.add_argument("--limit", type=int)
    runs.set_defaults(handler=_cmd_runs)

    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard on a store")
    dashboard.add_argument("--store", type=Path, default=Path("store"),
                           help="report store to show (default: the demo store ./store)")
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--address", default="localhost",
                           help="interface to listen on (0.0.0.0 to share on the network)")
    dashboard.set_defaults(handler=_cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TrustlabError as exc:
        print(f"trustlab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("trustlab: interrupted; finished runs are stored, the rest was not written",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
