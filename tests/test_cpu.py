import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from protrna.cpu import PackedLinear, onednn_available, onednn_supports, pack_for_cpu_inference

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear ops")
needs_onednn_bf16 = pytest.mark.skipif(not onednn_supports(torch.bfloat16),
                                       reason="oneDNN has no bfloat16 linear on this CPU (AVX2 only)")  # fmt: skip


@needs_onednn
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-5), pytest.param(torch.bfloat16, 0.1, marks=needs_onednn_bf16)])
def test_packed_model_gives_the_same_outputs_and_restores(tiny_model, dtype, atol):
    if not onednn_supports(dtype):
        pytest.skip(f"oneDNN has no {dtype} linear path on this CPU (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
    model = tiny_model.to(dtype)
    tokens = model.alphabet.get_batch_converter()(["ACGUACGGGU", "GGAUC"])
    with torch.inference_mode():
        before = model(tokens, repr_layers=[1, 2])
        restore = pack_for_cpu_inference(model, rows_hint=32)
        assert restore is not None and model.packed_for_cpu
        assert isinstance(model.lm.esm.encoder.layer[0].attention.self.query, PackedLinear)
        packed = model(tokens, repr_layers=[1, 2])
        restore()
        after = model(tokens, repr_layers=[2])
    assert isinstance(model.lm.esm.encoder.layer[0].attention.self.query, torch.nn.Linear)
    for layer in (1, 2):
        torch.testing.assert_close(packed["representations"][layer].float(),
                                   before["representations"][layer].float(), atol=atol, rtol=0)
    torch.testing.assert_close(after["representations"][2], before["representations"][2])


@pytest.mark.skipif(onednn_supports(torch.bfloat16), reason="this CPU runs oneDNN's bfloat16 linear")
def test_bfloat16_model_is_left_unpacked_where_onednn_has_no_bfloat16(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    tokens = model.alphabet.get_batch_converter()(["ACGUACGGGU"])
    assert pack_for_cpu_inference(model) is None and not getattr(model, "packed_for_cpu", False)
    with torch.inference_mode():  # still runs, on PyTorch's own kernels
        assert model(tokens, repr_layers=[2])["representations"][2].dtype == torch.bfloat16


@needs_onednn
def test_packing_twice_is_a_no_op(tiny_model):
    assert pack_for_cpu_inference(tiny_model) is not None
    assert pack_for_cpu_inference(tiny_model) is None


# Run in a fresh process: malloc's settings are process-wide, and a fresh process starts from
# glibc's defaults. ``mapped(size)`` says whether malloc(size) got a fresh mapping (1) or heap (0).
MALLOC_PROBE = r"""
import ctypes, json, sys
from protrna.cpu import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mapped(size):
    before = libc.mallinfo2().hblks
    pointer = libc.malloc(size)
    after = libc.mallinfo2().hblks
    libc.free(pointer)
    return after - before

MB = 1 << 20
seen = {}
with keep_freed_memory():
    seen["inside, 64 MB"] = mapped(64 * MB)
    with keep_freed_memory():
        pass
    seen["inside, after a nested context closed, 64 MB"] = mapped(64 * MB)
seen["after, 1 MB"] = mapped(1 * MB)
seen["after, 64 MB"] = mapped(64 * MB)
print(json.dumps(seen))
"""

needs_glibc_mallinfo2 = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
    reason="needs glibc >= 2.33 (mallinfo2) to observe malloc",
)


def probe_malloc(**env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_glibc_mallinfo2
def test_keep_freed_memory_serves_big_blocks_from_the_heap_and_nests():
    seen = probe_malloc()
    assert seen["inside, 64 MB"] == 0
    assert seen["inside, after a nested context closed, 64 MB"] == 0  # the inner exit restored nothing
    # Afterwards glibc is left where its own rule settles: up to 32 MB from the heap (not at its
    # 128 KB start, which mapped every later tensor afresh), bigger blocks mapped and returned.
    assert seen["after, 1 MB"] == 0
    assert seen["after, 64 MB"] == 1


@needs_glibc_mallinfo2
def test_keep_freed_memory_can_be_turned_off():
    seen = probe_malloc(PROTRNA_MALLOC_TUNING="0")
    assert seen["inside, 64 MB"] == 1


def test_a_dtype_onednn_cannot_run_here_is_left_unpacked(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    restore = pack_for_cpu_inference(model)
    assert (restore is not None) == onednn_supports(torch.bfloat16)
    tokens = model.alphabet.get_batch_converter()(["ACGU"])
    with torch.inference_mode():
        assert model(tokens)["logits"].shape == (1, 6, 38)  # runs either way
