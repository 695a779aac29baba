"""core.monitor"""
