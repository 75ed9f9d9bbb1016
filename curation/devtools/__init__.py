"""Developer tools that are not the pipeline: synthetic pools, the rehearsal server, the tiny model, the demo."""
