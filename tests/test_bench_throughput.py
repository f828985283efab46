"""``pegboard bench throughput`` end to end on a tiny random Llama: both backends, the printed table, the JSON."""

from __future__ import annotations

import json

from pegboard.core.cli import main


def test_both_backends_generate_every_requested_token_and_the_json_says_so(tiny_llama_dir, tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    rc = main(["bench", "throughput", "--model", str(tiny_llama_dir), "--load-format", "dummy",
               "--skip-tokenizer-init", "--device", "cpu", "--dataset", "random", "--num-prompts", "5",
               "--input-len", "12", "--output-len", "6", "--hf-batch-size", "2", "--output-json", str(report_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pegboard / hf output tok/s:" in printed and "elapsed s" in printed
    report = json.loads(report_path.read_text())
    assert report["requests"]["prompt_tokens"] == 5 * 12 and report["requests"]["output_tokens"] == 5 * 6
    for backend in ("pegboard", "hf"):
        result = report["results"][backend]
        assert result["output_tokens"] == 30 and result["generated_tokens"] == 30  # equal lengths: no HF padding
        assert result["output_tok_per_s"] == result["output_tokens"] / result["elapsed_s"]
        assert result["total_tok_per_s"] == (60 + 30) / result["elapsed_s"]
    ratio = report["results"]["pegboard"]["output_tok_per_s"] / report["results"]["hf"]["output_tok_per_s"]
    assert report["pegboard_over_hf_output_tok_per_s"] == ratio
    assert report["settings"]["num_prompts"] == 5 and report["environment"]["device"] == "cpu"
