"""Commands that read finished runs: plot their progress, replay their policies."""
