"""What the machine is and does: the CPU/GPU monitor, NVML, the releases installed."""
