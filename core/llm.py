"""The offline API: ``LLM(model=...).generate(prompts, SamplingParams(...))`` and ``.chat(messages)``."""

from __future__ import annotations

import itertools
from typing import Any, Sequence, Union

from pegboard.core.config import DEFAULT_MODEL, EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.errors import InvalidParameterError
from pegboard.core.outputs import RequestOutput
from pegboard.core.plugins import Board
from pegboard.core.sampling_params import SamplingParams

Prompt = Union[str, list[int], dict]
Message = dict[str, Any]


class LLM:
    """An engine for offline batched generation, with vLLM's argument names."""

    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str = "auto", max_model_len: int | None = None,
                 max_num_seqs: int = 128, load_format: str = "auto", seed: int = 0, device: str = "auto",
                 board: Board | None = None, **kwargs: Any) -> None:
        config = EngineConfig(model=model, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                              load_format=load_format, seed=seed, device=device, **kwargs)
        self.engine = LLMEngine(config, board)
        self._ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt (strings, token-id lists, or {"prompt"/"prompt_token_ids": ...})."""
        prompts = _as_prompt_list(prompts)
        return self._run([(_prompt_of(p), True) for p in prompts], sampling_params, use_tqdm)

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation and generate a reply."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [(self.apply_chat_template(c, chat_template=chat_template,
                                             add_generation_prompt=add_generation_prompt), False)
                   for c in conversations]
        return self._run(prompts, sampling_params, use_tqdm)

    def apply_chat_template(self, conversation: list[Message], *, chat_template: str | None = None,
                            add_generation_prompt: bool = True) -> str:
        """The prompt text the chat template makes of a conversation."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None or not (chat_template or getattr(tokenizer, "chat_template", None)):
            raise InvalidParameterError("this model has no chat template: pass chat_template=...",
                                        param="messages")
        if not conversation:
            raise InvalidParameterError("messages must not be empty", param="messages")
        return tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def _run(self, prompts: list[tuple[str | list[int], bool]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None, use_tqdm: bool
             ) -> list[RequestOutput]:
        params = _params_per_prompt(sampling_params, len(prompts))
        engine = self.engine
        ids = [str(next(self._ids)) for _ in prompts]
        try:
            for request_id, (prompt, add_special), p in zip(ids, prompts, params):
                engine.add_request(request_id, prompt, p, add_special_tokens=add_special, final_output_only=True)
        except Exception:
            for request_id in ids:
                engine.abort_request(request_id)
            raise
        finished: dict[str, RequestOutput] = {}
        bar = _progress_bar(len(ids), use_tqdm and not engine.config.disable_progress_bar)
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            for request_id in ids:
                engine.abort_request(request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[request_id] for request_id in ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


def _prompt_of(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"]
        raise InvalidParameterError("a prompt dict needs 'prompt' or 'prompt_token_ids'", param="prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
        return prompt
    raise InvalidParameterError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}",
                                param="prompt")


def _params_per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, count: int
                       ) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * count
    params = list(params)
    if len(params) != count:
        raise InvalidParameterError(f"got {len(params)} sampling params for {count} prompts",
                                    param="sampling_params")
    return params


def _progress_bar(total: int, enabled: bool):
    if not enabled or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="Processed prompts", unit="req", disable=None, dynamic_ncols=True)
