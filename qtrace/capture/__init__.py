"""Runs models and records traces: presets and loading, the timing protocol, the profiler, run.json.

The one side of qtrace that imports torch (lazily, inside functions, so `import qtrace` stays
light). Its product is a run folder: run.json plus one Kineto trace per precision.
"""
