"""A standard output whose reader left (training/streams.py). A real run with a closed stdout is in
test_faults.py."""
from __future__ import annotations

import io
import os

from training.run.streams import ReaderMayLeave


def test_a_stream_whose_reader_left_goes_to_devnull():
    """After a BrokenPipeError the descriptor is os.devnull, so later writes and the final flush succeed."""
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    guarded = ReaderMayLeave(stream)
    guarded.write("seen\n")
    assert os.read(read_end, 100) == b"seen\n"
    os.close(read_end)
    assert guarded.write("lost\n") == 5 and guarded.reader_left
    guarded.write("more\n")
    guarded.flush()
    stream.write("directly, as the interpreter does at exit\n")
    stream.flush()
    assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    stream.close()
