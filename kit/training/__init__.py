"""Training: the trainer and its loop, optimizer and schedule, losses, precision, data-parallel
processes, batch sizes, resume, interrupts, the session clock and its plan.
"""
