"""
Tests for L{gridlike._automat}: the table answers as Automat's own scan does.
"""

from __future__ import annotations

from typing import Any

from automat import NoTransition
from automat._core import Automaton
from twisted.trial.unittest import SynchronousTestCase

from gridlike.client._worker_link import new_link
from gridlike.server._worker_machine import new_worker_machine


class IndexedTests(SynchronousTestCase):
    """The machines built through L{gridlike._automat.indexed}."""

    def assertSameAnswers(self, machine: Any) -> None:
        """
        For every state and every input of C{machine}, the table gives what
        Automat's scan gives: the same state and outputs, or L{NoTransition}.
        """
        automaton = machine.__automat_automaton__
        self.assertIn("outputForInput", vars(automaton))
        taken = 0
        for state in automaton.states():
            for symbol in automaton.inputAlphabet():
                try:
                    expected = Automaton.outputForInput(automaton, state, symbol)
                except NoTransition:
                    self.assertRaises(NoTransition, automaton.outputForInput, state, symbol)
                    continue
                self.assertEqual(automaton.outputForInput(state, symbol), expected)
                taken += 1
        self.assertEqual(taken, len(automaton.allTransitions()))

    def test_server_worker_machine(self) -> None:
        self.assertSameAnswers(new_worker_machine)

    def test_worker_link_machine(self) -> None:
        self.assertSameAnswers(new_link)
