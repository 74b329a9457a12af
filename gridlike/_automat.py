# -*- test-case-name: tests.test_automat -*-
"""
Automat's machines, with their transitions looked up in a table.

Automat finds the transition for an input by comparing the state and the
input with every transition of the machine in turn.  The worker connection's
machine has about a hundred of them and is fed several inputs per job, so
that scan was the largest single cost of a worker's messages on the server.
L{indexed} gives a built machine's automaton a dictionary lookup instead,
with the same answers and the same L{NoTransition} for an input its state
does not take.  Both ends of the worker protocol build their machines
through it.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

from automat import NoTransition, TypeMachine

M = TypeVar("M", bound=TypeMachine[Any, Any])


def indexed(machine: M) -> M:
    """
    @param machine: a machine just built, with every transition added.
    @return: C{machine}, its automaton answering from a table of its
        transitions.
    """
    automaton = machine.__automat_automaton__
    table = {
        (state, symbol): (out, outputs)
        for state, symbol, out, outputs in automaton.allTransitions()
    }

    def output_for_input(state: Any, symbol: Any) -> tuple[Any, Sequence[Any]]:
        try:
            out, outputs = table[state, symbol]
        except KeyError:
            raise NoTransition(state=state, symbol=symbol) from None
        return out, list(outputs)

    automaton.outputForInput = output_for_input  # type: ignore[method-assign,assignment]
    return machine
