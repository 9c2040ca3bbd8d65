"""The job as a user sees it: spec, storage, manifest and cost, CLI."""
