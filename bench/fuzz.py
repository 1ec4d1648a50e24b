#!/usr/bin/env python3
"""A long fuzzing run of the DNS engine: the generators and the contract of tests/test_fuzz.py,
for minutes instead of seconds, one worker process per CPU.

    .venv/bin/python bench/fuzz.py --minutes 10            # prints packets fuzzed and the result
    .venv/bin/python bench/fuzz.py --minutes 1 --seed 7    # reproducible: worker i uses seed+i

Each worker builds the same index as the tests (the example cluster plus a 300-endpoint Service),
draws packets from the three generators (random bytes, mutated valid queries, structured hostile
packets: bad counts, oversized and looping names, several OPTs, huge options), answers each over
UDP and over TCP, and checks every reply. The first violation stops the run with the packet in
hex, so it can be turned into a regression test. Exit status 0 means no violation.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def worker(seed: int, seconds: float, results: multiprocessing.Queue) -> None:
    import test_fuzz

    index = test_fuzz.fuzz_zone().index
    rng = random.Random(seed)
    packets = 0
    deadline = time.monotonic() + seconds
    packet = b""
    try:
        while time.monotonic() < deadline:
            for _ in range(1000):
                packet = test_fuzz.any_packet(rng)
                test_fuzz.check_exchange(packet, tcp=False, index=index)
                test_fuzz.check_exchange(packet, tcp=True, index=index)
                packets += 1
    except BaseException as exc:  # report anything, KeyboardInterrupt included, with the packet
        results.put((seed, packets, f"{type(exc).__name__}: {exc}", packet.hex()))
        return
    results.put((seed, packets, None, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    results: multiprocessing.Queue = multiprocessing.Queue()
    started = time.monotonic()
    processes = [
        multiprocessing.Process(target=worker, args=(args.seed + i, args.minutes * 60, results))
        for i in range(args.workers)
    ]
    for process in processes:
        process.start()
    print(
        f"fuzzing for {args.minutes:g} min with {args.workers} workers, "
        f"seeds {args.seed}..{args.seed + args.workers - 1}",
        flush=True,
    )
    total, failures = 0, []
    for _ in processes:
        seed, packets, error, packet = results.get()
        total += packets
        if error is not None:
            failures.append((seed, error, packet))
    for process in processes:
        process.join()
    elapsed = time.monotonic() - started
    print(f"{total:,} packets fuzzed (each answered over UDP and TCP) in {elapsed:.0f} s, {total / elapsed:,.0f}/s")
    for seed, error, packet in failures:
        print(f"FAILED (seed {seed}): {error}\n  packet: {packet}")
    print("result: " + ("no violation" if not failures else f"{len(failures)} worker(s) found a violation"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
