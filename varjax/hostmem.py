"""Host allocator settings for XLA on CPU: keep freed memory in the process.

Every execution of a jitted program on the CPU backend allocates its temporaries and
outputs anew. glibc's malloc serves blocks above 32 MiB with fresh `mmap`s, and threads
other than the main one allocate from their own arenas, whose heaps are trimmed with
`madvise` when blocks are freed; either way the next step touches new pages and the kernel
zero-fills them on first touch. A var-d4 training step at batch 32 (the `varjax bench
train` configuration) page-faults about 300,000 times per step that way, roughly a fifth of
its time on this VM. With one arena, no mmap for large blocks and no trimming, freed blocks
are reused and the same step page-faults 0 times in most steps (measured with getrusage;
docs/benchmarks.md; now and then an output lands in fresh memory because the previous
one is released asynchronously).

The cost: memory freed by the process is not returned to the OS until it exits, so the
resident size stays at its peak, which a training process reaches in its first step anyway.
Set VARJAX_HOST_MALLOC=system to leave glibc's defaults alone. Other C libraries (macOS,
musl) are left alone too.

Written with ctypes because no library offers glibc's `mallopt`; the parameter numbers are
those of glibc's <malloc.h>.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Large enough never to trim (the parameter is a C int on some glibc builds).
_NEVER = 2**31 - 1


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
  """Applies the settings once per process; True when they took effect.

  Call it before JAX starts its thread pools (the CLI does so first thing): threads that
  already allocated keep their arena."""
  if os.environ.get("VARJAX_HOST_MALLOC", "keep") == "system":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  if not hasattr(libc, "gnu_get_libc_version"):
    return False  # not glibc: its parameter numbers may differ
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # mallopt returns 1 on success.
  return all(mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER)))
