"""SlideData is read by the server's worker threads at once."""

import threading
import time

import numpy as np

from sae1n.browse.slide_data import SlideData


class _SlowCoords(np.ndarray):
    """Coordinates whose fancy indexing takes a while: opens the window in
    which another thread sees a half-built spatial index."""

    def __getitem__(self, key):
        if isinstance(key, tuple) and isinstance(key[0], np.ndarray):
            time.sleep(0.05)
        return super().__getitem__(key)


def test_in_box_from_many_threads_at_once_on_a_fresh_slide():
    rng = np.random.default_rng(0)
    coords = (rng.integers(0, 100, size=(500, 2)) * 256).view(_SlowCoords)
    data = SlideData("s", coords, 256, np.zeros((500, 4), np.float32))
    expected = np.sort(SlideData("t", np.asarray(coords), 256, data.codes).in_box(0, 0, 5000, 5000))
    results, errors = [], []
    start = threading.Barrier(8)

    def work():
        start.wait()
        try:
            results.append(np.sort(np.asarray(data.in_box(0, 0, 5000, 5000))))
        except Exception as exc:  # the bug: AttributeError on a half-built index
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8 and all(np.array_equal(r, expected) for r in results)
