"""`make demo`: synthetic customer journeys sent through ingestion, with a live summary.

- `journeys`: pure, seeded generation of TouchpointEvents (no network).
- `run`: the command line, sending through IngestService.TrackBatch, progress, report.
- `personalisation`: decisions at the journeys' web, app and contact-centre touchpoints
  (PersonalisationService.Decide) and simulated outcomes (ReportOutcome), counted.
- `summary`: the closing summary's sections (one per service), each failing gracefully;
  `sections` lists them, each reading its service through its public API
  (`kafka_section`, `profile_section`, `personalisation_section`).
"""
