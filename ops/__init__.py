"""Workflows that span layers: consistency, train-and-promote, the demo, the report."""
