"""The test suite (a package, so that test helpers import one way: ``from tests.parity import ...``)."""
