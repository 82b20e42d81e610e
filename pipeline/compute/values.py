"""The value check on the device (a GPU build): a chunk's rows staged once and checked by one row kernel
(``kernels.row_check``), one small read of the codes per chunk; the host only reads files and keeps the books
(``data.value_check.check_and_sample`` takes the returned function as ``row_codes``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rvc_index.compute.backend import Backend
from rvc_index.compute.kernels import row_check


def device_row_codes(backend: Backend, bound: float) -> Callable[[np.ndarray], np.ndarray]:
    """``rows [n, D] -> codes [n]`` (host int32: 0 usable, 1 a value beyond ``bound``, 2 NaN or Inf), the check
    run on ``backend``'s device (pinned copies in blocks, one kernel, one read back)."""

    def codes(rows: np.ndarray) -> np.ndarray:
        return backend.to_host(row_check(backend.xp, backend.to_device(rows), bound))

    return codes
