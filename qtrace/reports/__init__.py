"""Renderers: turn TraceReports (and comparisons) into terminal tables, Markdown, CSV, JSON, HTML."""
