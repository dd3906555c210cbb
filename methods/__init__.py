"""Distillation methods bundled with kdbench, one file each (installed as kdbench.methods).

Every module in this folder is imported on the first registry lookup, so adding a method
is adding a file; see kdbench/method.py for the contract.
"""
