"""The ``trustlab`` command: parses arguments and calls the documented Python API.

Exit codes: 0 success, 1 a policy rule failed, 2 bad input (spec, data, checkpoint, names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustlab.errors import ConfigError, TrustlabError

EXIT_OK, EXIT_POLICY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


# Options that only mean something with --dp / --adv-train, with their defaults there: they
# default to None in argparse so that one given without its switch is an error, not ignored.
DP_OPTIONS = {"target_epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "rdp",
              "clipping": "flat", "secure_mode": False}
ADV_OPTIONS = {"adv_method": "trades", "adv_eps": 0.1, "adv_steps": 10}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _switched_options(args: argparse.Namespace, switch: str, defaults: dict) -> None:
    """Fill in ``defaults`` for the options of ``switch`` (``dp``, ``adv_train``) left unset;
    one given without its switch is a ConfigError."""
    for dest, default in defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        elif not getattr(args, switch):
            raise ConfigError(f"{_flag(dest)} needs {_flag(switch)}")


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from trustlab.train.trainer import TrainSettings, train

    if args.dp and args.adv_train:
        raise ConfigError("--dp and --adv-train cannot be combined: choose one")
    _switched_options(args, "dp", DP_OPTIONS)
    _switched_options(args, "adv_train", ADV_OPTIONS)
    settings = TrainSettings(epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                             batch_size=args.batch_size, optimizer=args.optimizer)
    if args.dp:
        from trustlab.privacy.train import train_private

        trained = train_private(args.arch, args.dataset, target_epsilon=args.target_epsilon,
                                delta=args.delta, max_grad_norm=args.max_grad_norm,
                                accountant=args.accountant, secure_mode=args.secure_mode,
                                clipping=args.clipping,
                                settings=settings, out=args.out, dataset_path=args.data_path)
    elif args.adv_train:
        from trustlab.attacks.defences import train_adversarial

        trained = train_adversarial(args.arch, args.dataset, eps=args.adv_eps,
                                    steps=args.adv_steps, method=args.adv_method,
                                    settings=settings, out=args.out, dataset_path=args.data_path)
    else:
        trained = train(args.arch, args.dataset, settings=settings, out=args.out,
                        dataset_path=args.data_path)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in trained.metrics.items() if k.startswith("test"))
    privacy = trained.meta["privacy"]
    spent = f", ε={privacy['epsilon']:.2f} at δ={privacy['delta']:g}" if privacy else ""
    if "test_accuracy" in trained.metrics:
        labels = trained.data.splits["test"].y
        majority = np.bincount(labels).max() / len(labels)
        if trained.metrics["test_accuracy"] <= majority:
            print(f"trustlab: warning: test accuracy {trained.metrics['test_accuracy']:.4f} is "
                  f"no better than always predicting the majority class ({majority:.4f})",
                  file=sys.stderr)
    Console().print(f"saved {args.out}: {metrics}{spent}", markup=False, soft_wrap=True)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from trustlab.audit.demo import run_demo

    run_demo(args.store, quick=args.quick, seed=args.seed)
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from trustlab.audit.store import ReportStore

    columns = ("run_id", "created", "name", "arch", "dataset", "status")
    rows = [[str(row[c]) for c in columns]
            for row in ReportStore(args.store, create=False).list_runs(limit=args.limit)]
    console = Console()
    if not console.is_terminal:  # piped: whole values, tab-separated, for scripts
        for line in (columns, *rows):
            print("\t".join(line))
        return EXIT_OK
    table = Table(title=f"runs in {args.store}")
    # ids are copied into `trustlab card` and --baseline: never cut, whatever the width
    table.add_column("run_id", no_wrap=True,
                     min_width=max((len(row[0]) for row in rows), default=len("run_id")))
    for column in columns[1:]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from trustlab.dashboard.launch import launch

    return launch(args.store, port=args.port, address=args.address)


def _cmd_audit(args: argparse.Namespace) -> int:
    from trustlab.audit.cards import write_cards
    from trustlab.audit.junit import write_junit
    from trustlab.audit.pipeline import run_spec
    from trustlab.audit.spec import load_spec
    from trustlab.audit.store import ReportStore
    from trustlab.audit.summary import markdown_summary, write_summary

    spec = load_spec(args.spec)
    store = ReportStore(args.store)
    gate = run_spec(spec, store, tier=args.tier, baseline=args.baseline,
                    backend="ray" if args.ray else "local", address=args.ray_address,
                    on_auditor_error=args.on_auditor_error, show_progress=not args.no_progress)
    if args.junit:
        write_junit(gate, args.junit)
    if args.summary:
        write_summary(gate, args.summary)
    write_cards(gate.report, store)
    sys.stderr.write(markdown_summary(gate))
    print(gate.report.run_id)
    return gate.exit_code


def _cmd_card(args: argparse.Namespace) -> int:
    from trustlab.audit.cards import render_card
    from trustlab.audit.store import ReportStore
    from trustlab.train.checkpoint import atomic_write_bytes

    text = render_card(ReportStore(args.store, create=False).load(args.run_id),
                       args.format)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trustlab.audit.store import ReportStore
    from trustlab.audit.sweep import SweepSettings, run_sweep

    settings = SweepSettings(arch=args.arch, dataset=args.dataset, epsilons=args.epsilons,
                             epochs=args.epochs, seed=args.seed, tier=args.tier,
                             auditors=args.auditors)
    sweep = run_sweep(settings, ReportStore(args.store), out=args.out,
                      backend="ray" if args.ray else "local", address=args.ray_address)
    print(sweep.table())
    return EXIT_OK


def _epsilons(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--epsilons takes numbers separated by commas (inf "
                                         f"for the non-private model), got {text!r}") from exc


def _add_ray_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--ray", action="store_true",
                         help="fan out over Ray (optional extra trustlab[ray])")
    command.add_argument("--ray-address", help="Ray cluster address (default: a local instance)")


def build_parser() -> argparse.ArgumentParser:
    from trustlab.train.data import available_datasets
    from trustlab.train.zoo import available_archs

    parser = argparse.ArgumentParser(prog="trustlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a zoo model and write a checkpoint",
                                description="Train a zoo model and write a checkpoint "
                                            "(model.safetensors + meta.json).")
    train.add_argument("--arch", required=True, help=f"one of {', '.join(available_archs())}")
    train.add_argument("--dataset", required=True,
                       help=f"one of {', '.join(available_datasets())}")
    train.add_argument("--out", required=True, type=Path,
                       help="checkpoint directory to write (created if missing)")
    train.add_argument("--epochs", type=int,
                       help="training epochs (default: the architecture's; with --dp, its DP "
                            "default)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the splits, initialisation and batches (default: 0)")
    train.add_argument("--lr", type=float,
                       help="learning rate (default: the architecture's; with --dp, its DP "
                            "default)")
    train.add_argument("--batch-size", type=int,
                       help="batch size (default: the architecture's; with --dp, its DP default "
                            "capped at 1/8 of the training rows, which it must stay below)")
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                       help="optimizer (default: adamw)")
    train.add_argument("--device", default="auto",
                       help="auto (CUDA when present), cpu, cuda (default: auto)")
    train.add_argument("--data-path", type=Path,
                       help="original source files instead of the bundled copies (default: the "
                            "bundled copies)")
    private = train.add_argument_group("differential privacy (DP-SGD); these options need --dp")
    private.add_argument("--dp", action="store_true", help="train with DP-SGD")
    private.add_argument("--target-epsilon", type=float,
                         help=f"privacy budget ε to spend (default: "
                              f"{DP_OPTIONS['target_epsilon']})")
    private.add_argument("--delta", type=float,
                         help=f"δ of (ε, δ)-DP (default: {DP_OPTIONS['delta']:g})")
    private.add_argument("--max-grad-norm", type=float,
                         help=f"clipping bound C (default: {DP_OPTIONS['max_grad_norm']})")
    private.add_argument("--accountant", choices=("rdp", "prv", "gdp"),
                         help="rdp, prv (tighter), gdp (Gaussian DP, asymptotic) (default: "
                              f"{DP_OPTIONS['accountant']})")
    private.add_argument("--clipping", choices=("flat", "per_layer", "automatic", "adaptive"),
                         help="per_layer: each layer clipped to C/sqrt(layers) by its own norm; "
                              "automatic: every sample scaled to C/(norm + 0.01) (Bu et al. "
                              "2022); adaptive: the bound starts at --max-grad-norm and follows "
                              "the median per-sample norm (Andrew et al. 2021) (default: "
                              f"{DP_OPTIONS['clipping']})")
    private.add_argument("--secure-mode", action="store_true", default=None,
                         help="draw the noise and the Poisson batches from a CSPRNG (slower; "
                              "for the run you ship)")
    robust = train.add_argument_group("adversarial training (TRADES or Madry et al.'s PGD); "
                                      "these options need --adv-train")
    robust.add_argument("--adv-train", action="store_true",
                        help="train against L∞ PGD adversarial examples of every batch (a "
                             "twice wider CNN)")
    robust.add_argument("--adv-method", choices=("trades", "madry"),
                        help="trades: clean loss + 6·KL to the adversarial prediction; "
                             "madry: loss on the adversarial examples (default: "
                             f"{ADV_OPTIONS['adv_method']})")
    robust.add_argument("--adv-eps", type=float,
                        help="L∞ radius (pixel units; tabular: standard deviations) (default: "
                             f"{ADV_OPTIONS['adv_eps']})")
    robust.add_argument("--adv-steps", type=int,
                        help=f"PGD steps per batch (default: {ADV_OPTIONS['adv_steps']})")
    train.set_defaults(handler=_cmd_train)

    demo = commands.add_parser("demo", help="train the reference zoo, audit it, fill the store")
    demo.add_argument("--store", type=Path, default=Path("store"),
                      help="report store to fill, created if missing (default: store)")
    demo.add_argument("--quick", action="store_true", help="two models, two epochs (for tests)")
    demo.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    demo.set_defaults(handler=_cmd_demo)

    runs = commands.add_parser("runs", help="list the runs in a report store")
    runs.add_argument("--store", type=Path, default=Path("store"),
                      help="existing report store to read (default: store)")
    runs.add_argument("--limit", type=int, help="newest N runs only (default: all)")
    runs.set_defaults(handler=_cmd_runs)

    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard on a store")
    dashboard.add_argument("--store", type=Path, default=Path("store"),
                           help="report store to show (default: the demo store ./store)")
    dashboard.add_argument("--port", type=int, default=8501, help="default: 8501")
    dashboard.add_argument("--address", default="localhost",
                           help="interface to listen on (0.0.0.0 to share on the network; "
                                "default: localhost)")
    dashboard.set_defaults(handler=_cmd_dashboard)

    audit = commands.add_parser("audit", help="run an audit spec and gate on its policy (CI)",
                                description="Exit codes: 0 every rule passed, 1 a rule failed, "
                                            "2 invalid spec/subject, a rule that cannot be "
                                            "evaluated, or an errored auditor.")
    audit.add_argument("spec", type=Path, help="audit spec (YAML)")
    audit.add_argument("--store", type=Path, default=Path("store"),
                       help="report store to write the run to, created if missing "
                            "(default: store)")
    audit.add_argument("--tier", choices=("smoke", "full"), help="default: the spec's tier")
    audit.add_argument("--junit", type=Path, help="write JUnit XML here (one testcase per rule)")
    audit.add_argument("--summary", type=Path, help="write a Markdown summary here")
    audit.add_argument("--baseline", metavar="RUN_ID",
                       help="run in the store that 'baseline' in rules refers to")
    audit.add_argument("--on-auditor-error", choices=("error", "fail", "ignore"),
                       help="exit 2 (error), 1 (fail) or ignore when an auditor errors "
                            "(default: the spec's on_auditor_error, else error)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_ray_flags(audit)
    audit.set_defaults(handler=_cmd_audit)

    card = commands.add_parser("card", help="write the model card of a run")
    card.add_argument("run_id", help="a run id from `trustlab runs`")
    card.add_argument("--store", type=Path, default=Path("store"),
                      help="existing report store to read (default: store)")
    card.add_argument("--format", choices=("md", "html"), default="md", help="default: md")
    card.add_argument("--out", type=Path, help="default: standard output")
    card.set_defaults(handler=_cmd_card)

    sweep = commands.add_parser("sweep", help="train at several DP epsilons, audit, plot Pareto")
    sweep.add_argument("--arch", default="mlp", help="default: mlp")
    sweep.add_argument("--dataset", default="adult", help="default: adult")
    sweep.add_argument("--epsilons", type=_epsilons, default=[1.0, 4.0, 16.0, float("inf")],
                       help="comma-separated; inf = non-private (default 1,4,16,inf)")
    sweep.add_argument("--epochs", type=int, help="default: the architecture's")
    sweep.add_argument("--seed", type=int, default=0, help="default: 0")
    sweep.add_argument("--tier", choices=("smoke", "full"), default="smoke",
                       help="default: smoke")
    sweep.add_argument("--auditors", nargs="*", help="default: every applicable auditor")
    sweep.add_argument("--store", type=Path, default=Path("store"),
                       help="report store to write the runs to, created if missing "
                            "(default: store)")
    sweep.add_argument("--out", type=Path, default=Path("sweep"),
                       help="folder for sweep.json and the Pareto plot (plotly JSON; "
                            "default: sweep)")
    _add_ray_flags(sweep)
    sweep.set_defaults(handler=_cmd_sweep)
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
