"""The one training loop, its entry points, optimiser and EMA, processes, batches and figures."""
