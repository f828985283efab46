"""The front end's output processor: fan-out of n choices, snapshots that alias nothing, stop strings that end a
sequence (to abort in the core), errors that end the whole request, and fresh core ids for a reused id. No model:
it is driven with EngineCoreOutputs made by hand, as a core would send them."""

from __future__ import annotations

from pegboard.core.messages import EngineCoreOutput, EngineCoreOutputs
from pegboard.core.output_processor import OutputProcessor
from pegboard.core.sampling_params import SamplingParams


class ByteTokenizer:
    """Token i is the character chr(i): enough for detokenizing and stop strings."""

    eos_token_id = 0

    def decode(self, token_ids, skip_special_tokens=True):
        return "".join(chr(t) for t in token_ids)


def step(processor: OutputProcessor, *outputs: EngineCoreOutput):
    return processor.process(EngineCoreOutputs(outputs))


def test_n_choices_become_n_core_sequences_with_their_own_seeds():
    processor = OutputProcessor(ByteTokenizer())
    requests = processor.add_request("r", "hi", [104, 105], SamplingParams(n=3, seed=10), eos_token_id=0)
    assert [r.request_id for r in requests] == ["r#0", "r#1", "r#2"]
    assert [r.sampling_params.seed for r in requests] == [10, 11, 12]


def test_outputs_are_snapshots_that_later_steps_do_not_change():
    processor = OutputProcessor(ByteTokenizer())
    processor.add_request("r", None, [104], SamplingParams(max_tokens=5), eos_token_id=0)
    [first] = step(processor, EngineCoreOutput("r", (97,))).request_outputs
    [second] = step(processor, EngineCoreOutput("r", (98,))).request_outputs
    assert first.outputs[0].token_ids == [97] and first.outputs[0].text == "a"
    assert second.outputs[0].token_ids == [97, 98] and second.outputs[0].text == "ab"


def test_a_stop_string_ends_the_sequence_and_asks_the_core_to_abort_it():
    processor = OutputProcessor(ByteTokenizer())
    processor.add_request("r", None, [104], SamplingParams(max_tokens=10, stop=["bc"]), eos_token_id=0)
    processed = step(processor, EngineCoreOutput("r", (97, 98, 99, 100)))  # a, b, c, d: "bc" ends it at c
    [output] = processed.request_outputs
    assert output.finished and output.outputs[0].text == "a" and output.outputs[0].stop_reason == "bc"
    assert output.outputs[0].token_ids == [97, 98, 99] and processed.abort_ids == ["r"]
    assert not processor.has_unfinished_requests()
    assert step(processor, EngineCoreOutput("r", (101,))).request_outputs == []  # a late token is discarded


def test_an_error_of_one_choice_ends_the_whole_request():
    processor = OutputProcessor(ByteTokenizer())
    processor.add_request("r", None, [104], SamplingParams(n=2, max_tokens=10), eos_token_id=0)
    processed = step(processor, EngineCoreOutput("r#1", (), finish_reason="error", error="the step failed"))
    [output] = processed.request_outputs
    assert output.finished and output.error == "the step failed"
    assert [c.finish_reason for c in output.outputs] == ["error", "error"] and "r#0" in processed.abort_ids


def test_a_reused_request_id_gets_a_fresh_core_id():
    processor = OutputProcessor(ByteTokenizer())
    [first] = processor.add_request("r", None, [104], SamplingParams(max_tokens=1), eos_token_id=0)
    step(processor, EngineCoreOutput("r", (97,), finish_reason="length"))
    [again] = processor.add_request("r", None, [104], SamplingParams(max_tokens=1), eos_token_id=0)
    assert (first.request_id, again.request_id) == ("r", "r@1")
    assert step(processor, EngineCoreOutput("r", (98,))).request_outputs == []  # the old sequence's late token
    [output] = step(processor, EngineCoreOutput("r@1", (99,), finish_reason="length")).request_outputs
    assert output.request_id == "r" and output.outputs[0].token_ids == [99]


def test_a_final_output_only_request_yields_one_output_equal_to_the_cumulative_paths_last():
    outputs = {}
    for final_only in (False, True):
        processor = OutputProcessor(ByteTokenizer())
        processor.add_request("r", "h", [104], SamplingParams(n=2, max_tokens=3, stop=["c"]), eos_token_id=0,
                              final_output_only=final_only, arrival_time=1.0)
        steps = [(EngineCoreOutput("r#0", (97,)), EngineCoreOutput("r#1", (98,))),
                 (EngineCoreOutput("r#0", (98,)), EngineCoreOutput("r#1", (99,))),  # "c" stops r#1
                 (EngineCoreOutput("r#0", (100,), finish_reason="length"),)]
        outputs[final_only] = [o for outs in steps for o in step(processor, *outs).request_outputs]
        assert not processor.has_unfinished_requests()
    cumulative, [final] = outputs[False], outputs[True]
    assert len(cumulative) == 3 and final.finished
    assert [(c.text, c.token_ids, c.finish_reason, c.stop_reason) for c in final.outputs] == [
        (c.text, c.token_ids, c.finish_reason, c.stop_reason) for c in cumulative[-1].outputs] == [
        ("abd", [97, 98, 100], "length", None), ("b", [98, 99], "stop", "c")]
    assert final.prompt_token_ids == cumulative[-1].prompt_token_ids == [104]


def test_a_snapshots_metrics_are_a_copy_of_every_timestamp():
    from dataclasses import fields

    from pegboard.core.output_processor import _copied
    from pegboard.core.outputs import RequestMetrics

    metrics = RequestMetrics(*(float(i) for i in range(len(fields(RequestMetrics)))))
    copy = _copied(metrics)
    assert copy is not metrics and vars(copy) == vars(metrics)
