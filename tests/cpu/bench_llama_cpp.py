"""llama.cpp (llama-cpp-python) on the packaged SmolLM2 Q4_1 GGUF, for a same-machine figure beside
tests/cpu/bench_cpu_decode.py's: one request, the same chat prompt, greedy, 128 tokens after the first, best of
``--repeat``. Prompts go in one token at a time (``n_batch=1``): on the 2-core Xeon of 2026-12-02, llama-cpp-python
0.3.36 built with GGML_NATIVE crashed (SIGSEGV in decode) on any multi-token batch, so llama.cpp's prefill is not
measured here; its decode, one token a step, is what a batch of one runs anyway.

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36   # builds llama.cpp (minutes); own venv fine
    python tests/cpu/bench_llama_cpp.py [--repeat 3] [--threads 2] [--gguf PATH]

Without --gguf it takes the file Pegboard fetched (~/.cache/pegboard/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# bench_cpu_decode.py's chat prompt as SmolLM2's chat template renders it (its default system message included);
# llama-cpp-python 0.3.36's create_chat_completion crashed on this file here, so the text goes to create_completion
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\nTell me about the history of Paris in a few paragraphs.<|im_end|>\n"
          "<|im_start|>assistant\n")
DEFAULT_GGUF = Path.home() / ".cache/pegboard/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def decode_rate(llm, tokens: int) -> float:
    """Tokens after the first per second, streamed, greedy (this prompt's answer runs past 128 tokens; the count
    of chunks is printed by main so a shorter answer shows)."""
    stream = llm.create_completion(PROMPT, max_tokens=tokens + 1, temperature=0, stream=True)
    times = [time.perf_counter() for chunk in stream if chunk["choices"][0]["text"]]
    decode_rate.last_count = len(times)
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gguf", default=str(DEFAULT_GGUF))
    args = parser.parse_args()
    import llama_cpp

    llm = llama_cpp.Llama(args.gguf, n_ctx=2048, n_threads=args.threads, n_batch=1, n_ubatch=1, verbose=False)
    decode_rate(llm, 8)  # warm-up
    decode = [decode_rate(llm, args.tokens) for _ in range(args.repeat)]
    load = open("/proc/loadavg").read().split()[0]
    print(f"llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, load {load}: "
          f"{decode_rate.last_count} streamed tokens, decode "
          f"{max(decode):.1f} tok/s (runs {', '.join(f'{r:.1f}' for r in decode)})")


if __name__ == "__main__":
    main()
