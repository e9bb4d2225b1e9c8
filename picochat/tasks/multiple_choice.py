"""The one multiple-choice format, shared by every task that asks one (ARC, MMLU, the training examples).

The user sees the question and lettered choices; the assistant's answer is the letter alone. That makes
a categorical eval cheap and exact: one forward pass, then compare the model's logits of the letters at
the answer position (the engine never has to parse free text).

    multiple_choice("2 + 2 = ?", ["3", "4"], answer=1)["messages"][-1] == {"role": "assistant", "content": "B"}
"""

from __future__ import annotations

LETTERS = "ABCDEFGHIJ"


def multiple_choice(question: str, choices: list[str], answer: int) -> dict:
    """A conversation asking question with lettered choices; the assistant answers the right letter."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} is not one of the {len(choices)} choices")
    letters = list(LETTERS[:len(choices)])
    lines = [question.strip(), ""] + [f"{letter}. {choice.strip()}" for letter, choice in zip(letters, choices)]
    lines += ["", "Answer with the letter of the right choice."]
    return {"messages": [{"role": "user", "content": "\n".join(lines)},
                         {"role": "assistant", "content": letters[answer]}],
            "letters": letters, "answer": letters[answer]}
