"""`make demo`: synthetic customer journeys sent through ingestion, with a live summary.

- `journeys`: pure, seeded generation of TouchpointEvents (no network).
- `run`: the command line, sending through IngestService.TrackBatch, progress, report.
- `summary`: the report's plug-in sections (one per service), each failing gracefully.
"""
