"""The engine worker's torch threads: within its cap, per batch size, the count that has run such batches fastest."""

import threading

from captioner.engine.threads import WorkerThreads

# Seconds per batch on a 2-core machine under OpenMP's passive wait, as the demo captioner behaves there: one image
# is faster on one thread (waking the other costs more than it gives), 32 images are faster on two.
COSTS = {(1, 1): 0.0065, (2, 1): 0.021, (1, 32): 0.060, (2, 32): 0.045}


def drive(chooser: WorkerThreads, batches: int, costs: dict, rows: int, decoding: bool = False) -> list[int]:
    """The counts the chooser picks for `batches` batches of `rows`, each taking what costs says for that count."""
    picks = []

    def run():  # in a thread of its own: choose() sets the calling thread's torch count
        for _ in range(batches):
            chooser.choose(decoding=decoding, rows=rows)
            picks.append(chooser.current)
            chooser.ran(costs[(chooser.current, rows)])

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return picks


def two_core_chooser() -> WorkerThreads:
    chooser = WorkerThreads(beside_decoding=1, explore_every=8)
    chooser.default = 2  # torch's default on a 2-core machine, whatever this one has
    return chooser


def test_each_batch_size_settles_on_the_count_that_ran_it_faster_and_keeps_checking_the_other():
    chooser = two_core_chooser()
    one, many = drive(chooser, 40, COSTS, rows=1), drive(chooser, 40, COSTS, rows=32)
    tries = 2 * WorkerThreads.TRIES  # both counts tried first, the cap first (torch's default, as before any timing)
    assert one[0] == 2 and sorted(one[:tries]) == [1] * WorkerThreads.TRIES + [2] * WorkerThreads.TRIES
    assert one[tries:].count(1) == len(one[tries:]) - len(one[tries:]) // 8  # the other count every 8th batch
    assert many[tries:].count(2) == len(many[tries:]) - len(many[tries:]) // 8
    assert drive(chooser, 1, {(1, 20): 0.05, (2, 20): 0.03}, rows=20) == [2]  # 20 rows: what 32 taught, no new tries


def test_a_change_of_load_moves_the_choice():
    chooser = two_core_chooser()
    assert drive(chooser, 30, COSTS, rows=1)[-10:].count(1) >= 8
    swapped = {(1, 1): 0.021, (2, 1): 0.0065}  # another process now takes a core's worth of single-thread work
    assert drive(chooser, 40, swapped, rows=1)[-10:].count(2) >= 8


def test_while_images_decode_the_worker_stays_on_its_share():
    chooser = two_core_chooser()
    assert set(drive(chooser, 20, COSTS, rows=32, decoding=True)) == {1}
    assert set(drive(chooser, 20, COSTS, rows=32)) == {1, 2}  # alone it may use every core again


def test_failed_batches_teach_nothing():
    chooser = two_core_chooser()
    for _ in range(20):
        chooser.choose(decoding=False, rows=1)  # each batch fails: ran() is never called
    assert chooser.current == 2 and not chooser._times
