import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import calc  # noqa: E402


class CalcTest(unittest.TestCase):
    def test_add(self) -> None:
        self.assertEqual(calc.add(2, 3), 5)

    def test_mean(self) -> None:
        self.assertEqual(calc.mean([1.0, 2.0, 3.0]), 2.0)

    def test_mean_of_nothing(self) -> None:
        with self.assertRaises(ValueError):
            calc.mean([])


if __name__ == "__main__":
    unittest.main()
