"""Which decode batch sizes get a CUDA graph (the capture itself needs a GPU: tests/gpu/check_graphs.py)."""

from pegboard.core.cuda_graphs import batch_buckets


def test_buckets_start_small_end_at_the_largest_batch_and_bound_the_padding():
    for max_batch in (1, 3, 8, 100, 256, 512):
        buckets = batch_buckets(max_batch)
        assert buckets == sorted(set(buckets)) and buckets[0] == 1 and buckets[-1] == max_batch
        for batch in range(1, max_batch + 1):
            bucket = next(b for b in buckets if b >= batch)
            assert bucket - batch < max(8, 16 if batch > 64 else 0)  # padding rows a step of this size runs


def test_the_default_256_sequences_capture_23_graphs():
    assert batch_buckets(256) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192,
                                  208, 224, 240, 256]
