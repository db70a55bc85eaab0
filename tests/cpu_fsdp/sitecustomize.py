"""A test-only switch (on PYTHONPATH in tests/test_launch.py only): FSDP on a CPU.

accelerate 1.16's AcceleratorState turns an FSDP config into FSDP on accelerators only; on a CPU
(MULTI_CPU, gloo) it drops the FSDP plugin without a word and the Trainer wraps the model in DDP, so a CPU
test that passes an FSDP config would prove nothing. Here, in processes that `accelerate launch` started
for an FSDP config, MULTI_CPU becomes FSDP (PartialState stays MULTI_CPU: barriers stay plain gloo), and
the package's FSDP2 path runs as it would on GPUs. The tests assert that it did (FSDP2 wrapping, shards).
"""
import os

if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    _original = AcceleratorState.__init__

    def _fsdp_on_cpu(self, *args, **kwargs):
        _original(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
            if self._mixed_precision != "no":
                plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = plugin
            self.distributed_type = DistributedType.FSDP

    AcceleratorState.__init__ = _fsdp_on_cpu
