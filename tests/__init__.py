"""The test suite, a package: helpers import one way (``from tests.parity import ...``)."""
