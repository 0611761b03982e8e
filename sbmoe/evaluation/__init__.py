"""Evaluation: retrieval systems, ir-measures scoring, reports and leaderboards."""
