"""Shared by the robustness benchmarks: the digits CNN to attack (a checkpoint or a fresh
default ``train("cnn", "digits")``), its test split and input domain."""

from __future__ import annotations

import argparse

import torch

from trustlab.attacks.art_adapter import input_domain
from trustlab.train.subject import Subject
from trustlab.train.trainer import train


def load_subject(args: argparse.Namespace) -> Subject:
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        return Subject.from_checkpoint(args.checkpoint)
    return Subject.from_trained(train("cnn", "digits", show_progress=False), "digits-cnn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a digits checkpoint (default: train the CNN)")
    parser.add_argument("--eps", type=float, default=0.1, help="L∞ radius")
    parser.add_argument("--threads", type=int, default=2)


def sample(subject: Subject):
    test = subject.split("test")
    return subject.clean_model(), test.X, test.y, input_domain(subject.data)
