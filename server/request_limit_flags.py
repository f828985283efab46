"""``pegboard serve``'s flags bounding the work of one request: prompts, sequences (n x prompts), logprobs."""

from __future__ import annotations

import argparse

from pegboard.core.errors import InvalidParameterError
from pegboard.server.protocol import DEFAULT_MAX_PROMPTS, DEFAULT_MAX_SEQUENCES, MAX_LOGPROBS, RequestLimits


def add_request_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags capping what one request may ask for (more is a 400 naming the field)."""
    group.add_argument("--max-prompts-per-request", type=int, default=DEFAULT_MAX_PROMPTS, metavar="N",
                       help="prompts one /v1/completions request may list; more is a 400 naming 'prompt' "
                            f"(default: {DEFAULT_MAX_PROMPTS})")
    group.add_argument("--max-sequences-per-request", type=int, default=DEFAULT_MAX_SEQUENCES, metavar="N",
                       help="sequences (n x prompts) one request may ask for; more is a 400 naming 'n' "
                            f"(default: {DEFAULT_MAX_SEQUENCES})")
    group.add_argument("--max-logprobs", type=int, default=MAX_LOGPROBS, metavar="N",
                       help="the most logprobs, top_logprobs or prompt_logprobs a request may ask for; more is a 400 "
                            f"(default and most the engine computes: {MAX_LOGPROBS})")


def request_limits_from_args(args: argparse.Namespace) -> RequestLimits:
    """The RequestLimits the flags ask for; InvalidParameterError for a cap below 1."""
    for flag, value in (("--max-prompts-per-request", args.max_prompts_per_request),
                        ("--max-sequences-per-request", args.max_sequences_per_request)):
        if value < 1:
            raise InvalidParameterError(f"{flag} must be >= 1, got {value}")
    if not 0 <= args.max_logprobs <= MAX_LOGPROBS:
        raise InvalidParameterError(f"--max-logprobs must be in [0, {MAX_LOGPROBS}] (the engine computes at most "
                                    f"{MAX_LOGPROBS} per position), got {args.max_logprobs}")
    return RequestLimits(max_prompts=args.max_prompts_per_request, max_sequences=args.max_sequences_per_request,
                         max_logprobs=args.max_logprobs)
