"""Turning request bodies into matrices and options, quickly and with errors that say what to fix.

Decoding never speaks HTTP: it raises the request errors of :mod:`service.errors`, which
``service.app`` answers with their status codes.
"""
