"""numpy + OpenBLAS beside `kernel_table table`: x · wᵀ for w [8192, 2048] f32
and x [m, 2048], m = 1, 4, 16, 64, 512, in ms (best of five rounds of at
least 0.2 s each), then the BLAS library threadpoolctl finds. Run with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset. Needs numpy and threadpoolctl."""
import json
import time

import numpy as np
from threadpoolctl import threadpool_info


def time_ms(f):
    f()
    best = float("inf")
    for _ in range(5):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < 0.2:
            f()
            calls += 1
        best = min(best, (time.perf_counter() - start) * 1e3 / calls)
    return best


n, k = 8192, 2048
rng = np.random.default_rng(0)
w = rng.uniform(-0.1, 0.1, (n, k)).astype(np.float32)
for m in [1, 4, 16, 64, 512]:
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    ms = time_ms(lambda: x @ w.T)
    print(json.dumps({"weights": "f32", "m": m, "numpy_ms": round(ms, 3)}))
keys = ("internal_api", "version", "architecture", "num_threads")
blas = [{key: info.get(key) for key in keys} for info in threadpool_info()]
print(json.dumps({"blas": blas}))
