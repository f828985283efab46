"""``pegboard generate [MODEL] --prompt TEXT``: offline generation for each prompt, the texts printed."""

from __future__ import annotations

import argparse
import sys

from pegboard.core.cli_args import add_engine_arguments, engine_kwargs_from_args
from pegboard.core.config import DEFAULT_MODEL
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import Board


@hookimpl
def register_commands(register) -> None:
    register("generate", add_arguments, run, help="generate text for prompts (offline)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the prompts, the sampling settings and the engine flags."""
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model name, path or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    parser.add_argument("--chat", action="store_true", help="send each prompt as a user message of a chat")
    sampling = parser.add_argument_group("sampling (default: SamplingParams' defaults)")
    sampling.add_argument("--max-tokens", type=int, help="tokens to generate per prompt (default: 16)")
    sampling.add_argument("--temperature", type=float, help="0 for greedy (default: 1.0)")
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--n", type=int, help="completions per prompt (default: 1)")
    add_engine_arguments(parser)


def run(args: argparse.Namespace, board: Board) -> int:
    """Generate for each ``--prompt`` and print the texts."""
    from pegboard.core.llm import LLM
    from pegboard.core.sampling_params import SamplingParams

    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "n": args.n}
    params = SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
    llm = LLM(args.model, board=board, **engine_kwargs_from_args(args))
    show_progress = sys.stderr.isatty()
    if args.chat:
        conversations = [[{"role": "user", "content": prompt}] for prompt in args.prompt]
        outputs = llm.chat(conversations, params, use_tqdm=show_progress)
    else:
        outputs = llm.generate(args.prompt, params, use_tqdm=show_progress)
    several = len(outputs) > 1 or params.n > 1
    for i, output in enumerate(outputs):
        for completion in output.outputs:
            if several:
                print(f"--- prompt {i}" + (f", completion {completion.index}" if params.n > 1 else "") + " ---")
            print(completion.text)
    return 0
