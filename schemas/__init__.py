"""Avro schemas for every record that crosses a boundary, and the external formats we read and write."""
