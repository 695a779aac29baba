"""core.launch"""
