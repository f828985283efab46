"""Built-in plugin: the in-process executor (one ModelRunner in the engine's own process)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl


class UniprocExecutor:
    """Runs the model in this process; a multi-process executor would keep the same methods."""

    supports_launch = True  # a LaunchingExecutor (core/interfaces.py): launch() queues a step on the device

    def __init__(self, config, board, files, loader, hf_config, max_model_len: int) -> None:
        from pegboard.core.model_runner import ModelRunner

        self.runner = ModelRunner(config, board, files, loader, hf_config, max_model_len)

    @property
    def num_kv_blocks(self) -> int:
        return self.runner.num_kv_blocks

    def execute(self, scheduled):
        """Run one step (a SchedulerOutput; its finished ids are forgotten first); returns a RunnerOutput."""
        return self.runner.execute(scheduled)

    def launch(self, scheduled):
        """Queue one step on the device; returns a LaunchedStep whose ``result()`` is the RunnerOutput."""
        return self.runner.launch(scheduled)

    @property
    def queues_work(self) -> bool:
        """Whether launched work runs on the device while the host goes on (CUDA; not the CPU)."""
        return self.runner.device.type == "cuda"


@hookimpl
def register_executors(register) -> None:
    register("uniproc", UniprocExecutor)
