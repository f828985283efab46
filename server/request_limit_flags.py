"""``pegboard serve``'s flags bounding the work of one request: prompts, and sequences (n x prompts)."""

from __future__ import annotations

import argparse

from pegboard.core.errors import InvalidParameterError
from pegboard.server.protocol import DEFAULT_MAX_PROMPTS, DEFAULT_MAX_SEQUENCES, RequestLimits


def add_request_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags capping what one request may ask for (more is a 400 naming the field)."""
    group.add_argument("--max-prompts-per-request", type=int, default=DEFAULT_MAX_PROMPTS, metavar="N",
                       help="prompts one /v1/completions request may list; more is a 400 naming 'prompt' "
                            f"(default: {DEFAULT_MAX_PROMPTS})")
    group.add_argument("--max-sequences-per-request", type=int, default=DEFAULT_MAX_SEQUENCES, metavar="N",
                       help="sequences (n x prompts) one request may ask for; more is a 400 naming 'n' "
                            f"(default: {DEFAULT_MAX_SEQUENCES})")


def request_limits_from_args(args: argparse.Namespace) -> RequestLimits:
    """The RequestLimits the flags ask for; InvalidParameterError for a cap below 1."""
    for flag, value in (("--max-prompts-per-request", args.max_prompts_per_request),
                        ("--max-sequences-per-request", args.max_sequences_per_request)):
        if value < 1:
            raise InvalidParameterError(f"{flag} must be >= 1, got {value}")
    return RequestLimits(max_prompts=args.max_prompts_per_request, max_sequences=args.max_sequences_per_request)
