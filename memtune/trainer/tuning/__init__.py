"""What builds a memory: the frozen pass, expert assignment, calibration, sparse training, checkpoints, ranks."""
