"""Training: the trainer and the loop it shares with the generator (a diffusion model of scarce
classes), optimizer and schedule, losses, data-parallel processes, batch sizes, resume,
interrupts, the session clock and its plan."""
