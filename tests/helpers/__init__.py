"""Scripts and helpers that the tests run or import (not tests themselves)."""
