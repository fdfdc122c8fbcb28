"""A netplay server for Panel Attack speaking the letter protocol."""

__version__ = "0.1.0"
