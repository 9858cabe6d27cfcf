"""Helpers the tests share: real receivers and subprocess runners."""
