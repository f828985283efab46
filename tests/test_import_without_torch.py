"""The scheduler, block manager, request types, messages and the front end's output processing are pure Python:
they import without torch."""

import subprocess
import sys

TORCH_FREE_MODULES = [
    "pegboard.core.scheduler",
    "pegboard.core.block_manager",
    "pegboard.core.prefix_cache",
    "pegboard.core.request",
    "pegboard.core.sampling_params",
    "pegboard.core.config",
    "pegboard.core.outputs",
    "pegboard.core.plugins",
    "pegboard.core.model_files",
    "pegboard.core.commands",
    "pegboard.core.interfaces",
    "pegboard.core.cli",
    # the step contract and the front end's side of it
    "pegboard.core.messages",
    "pegboard.core.model_info",
    "pegboard.core.worker_state",
    "pegboard.core.logits_processors",
    "pegboard.core.launched_step",
    "pegboard.core.output_processor",
    "pegboard.core.core_client",
]


def test_core_bookkeeping_imports_no_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        + "".join(f"import {m}\n" for m in TORCH_FREE_MODULES)
        + "from pegboard.core.plugins import load_board\n"
        "board = load_board()  # built-in plugins register without importing torch\n"
        "assert not board.failures, board.failures\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
