"""GSM8K (tasks/gsm8k.py): its calculator marks become calculator calls the engine can replay, real-looking
solutions score, and rows without a final number are dropped.

    python -m pytest tests/test_gsm8k.py
"""

from __future__ import annotations

import pytest

from fakes import gsm8k_file
from picochat.calculator import calculate
from picochat.tasks.gsm8k import ANNOTATION, GSM8K, answer_parts


def parts(*pairs: tuple[str, str]) -> list[dict]:
    return [{"type": kind, "text": text} for kind, text in pairs]


@pytest.mark.parametrize("solution, expected", [
    ("She sold 48/2 = <<48/2=24>>24 clips.",
     parts(("text", "She sold 48/2 = "), ("python", "48/2"), ("python_output", "24"), ("text", "24 clips."))),
    ("It costs 3 * $4 = $<<3*$4=12>>12.",  # dollar signs are not Python: the call leaves them out
     parts(("text", "It costs 3 * $4 = $"), ("python", "3*4"), ("python_output", "12"), ("text", "12."))),
    ("That is <<1,000*2=2,000>>2,000 m.",  # thousands commas would make a tuple
     parts(("text", "That is "), ("python", "1000*2"), ("python_output", "2000"), ("text", "2,000 m."))),
    ("Each gets <<10/4=2.50>>$2.50",  # the calculator says 2.5, the annotation 2.50: the same number
     parts(("text", "Each gets "), ("python", "10/4"), ("python_output", "2.5"), ("text", "$2.50"))),
    ("He pays 18*.5 = $<<18*.5=9.00>>9.00 (half of 18, see <<18/2=9>>9).",
     parts(("text", "He pays 18*.5 = $"), ("python", "18*.5"), ("python_output", "9"),
           ("text", "9.00 (half of 18, see "), ("python", "18/2"), ("python_output", "9"), ("text", "9)."))),
    ("<<2+3=5>><<5*2=10>>\n#### 10",  # back to back, nothing between
     parts(("python", "2+3"), ("python_output", "5"), ("python", "5*2"), ("python_output", "10"),
           ("text", "\n#### 10"))),
    ("Wrong: 10-3 = <<10-3=8>>8", parts(("text", "Wrong: 10-3 = <<10-3=8>>8"))),  # the calculator disagrees
    ("Times: <<2x3=6>>6", parts(("text", "Times: <<2x3=6>>6"))),                   # not an expression
    ("No result <<48/2>> and none <<=5>>", parts(("text", "No result <<48/2>> and none <<=5>>"))),
    ("Huge <<9**9**9=1>>", parts(("text", "Huge <<9**9**9=1>>"))),                 # the calculator refuses
])
def test_gsm8k_marks_become_calculator_calls(solution, expected):
    assert answer_parts(solution) == expected


def test_gsm8k_rounded_annotation_keeps_the_calculators_own_output():
    call, output, text = answer_parts("Each gets 10/3 = <<10/3=3.33>>3.33 cakes.")[1:]
    assert (call["text"], output["text"]) == ("10/3", calculate("10/3"))
    assert output["text"] != "3.33" and text["text"] == "3.33 cakes."


# Solutions written the way GSM8K's train file writes them (its first examples and similar ones).
REAL_LOOKING = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
    "April and May.\n#### 72",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
    "$<<0.2*50=10>>10.\n#### 10",
    "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
    "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5",
    "Maila read 12 x 2 = <<12*2=24>>24 pages today.\nSo she was able to read a total of 12 + 24 = <<12+24=36>>36 "
    "pages since yesterday.\nThere are 120 - 36 = <<120-36=84>>84 pages left to be read.\nSince she wants to "
    "read half of the remaining pages tomorrow, then she should read 84/2 = <<84/2=42>>42 pages.\n#### 42",
    "He writes each friend\n3*2=<<3*2=6>>6 pages a week\nSo he writes\n6*2=<<6*2=12>>12 pages every week\nThat "
    "means he writes\n12*52=<<12*52=624>>624 pages a year\n#### 624",
    "There are 80/100 * 10 = <<80/100*10=8>>8 more purple flowers than yellow flowers.\nSo in Mark's garden, "
    "there are 10 + 8 = <<10+8=18>>18 purple flowers.\nPurple and yellow flowers sum up to 10 + 18 = "
    "<<10+18=28>>28 flowers.\nThat means in Mark's garden there are 25/100 * 28 = <<25/100*28=7>>7 green "
    "flowers.\nSo in total Mark has 28 + 7 = <<28+7=35>>35 plants in his garden.\n#### 35",
    "He eats 32 from the largest pizzas because 2 x 16 = <<2*16=32>>32\nHe eats 16 from the small pizza because "
    "2 x 8 = <<2*8=16>>16\nHe eats 48 pieces because 32 + 16 = <<32+16=48>>48\n#### 48",
    "To the initial 2 pounds of jelly beans, he added enough brownies to cause the weight to triple, bringing "
    "the weight to 2*3=<<2*3=6>>6 pounds.\nNext, he added another 2 pounds of jelly beans, bringing the weight "
    "to 6+2=<<6+2=8>>8 pounds.\nAnd finally, he added enough gummy worms to double the weight once again, to a "
    "final weight of 8*2=<<8*2=16>>16 pounds.\n#### 16",
    "Let S be the amount Alexis paid for the shoes.\nShe spent S + 30 + 46 + 38 + 11 + 18 = S + "
    "<<+30+46+38+11+18=143>>143.\nShe used all but $16 of her budget, so S + 143 = 200 - 16 = 184.\nThus, Alexis "
    "paid S = 184 - 143 = $<<184-143=41>>41 for the shoes.\n#### 41",
    "She works 8 hours a day for $18 per hour so she makes 8*18 = $<<8*18=144.00>>144.00 per 8-hour shift\nShe "
    "works 10 hours a day and anything over 8 hours is eligible for overtime, so she gets 10-8 = <<10-8=2>>2 "
    "hours of overtime\nOvertime is calculated as time and a half so and she makes $18/hour so her overtime pay "
    "is 18*.5 = $<<18*.5=9.00>>9.00\nHer overtime pay is 18+9 = $<<18+9=27.00>>27.00\nHer base pay is $144.00 "
    "per 8-hour shift and she works 5 days and makes 5 * $144 = $<<144*5=720.00>>720.00\nHer overtime pay is "
    "$27.00 per hour and she works 2 hours of overtime per day and makes 27*2 = $<<27*2=54.00>>54.00 in overtime "
    "pay\n2 hours of overtime pay for 5 days means she makes 54*5 = $270.00\nIn 5 days her base pay is $720.00 "
    "and she makes $270.00 in overtime pay so she makes $720 + $270 = $<<720+270=990.00>>990.00\n#### 990",
    "The third hundred years' ship had twice as many as the second, so it had 2 * 2S = <<2*2=4>>4S people.\nAll "
    "the ships had S + 2S + 4S = 7S = 847 people.\nThus, the ship that the monster ate in the first hundred "
    "years had S = 847 / 7 = <<847/7=121>>121 people on it.\n#### 121",
    "He saved up $110 total because 95 + 15 = <<95+15=110>>110\nHe saved $15 from his allowance because 3 x 5 = "
    "<<3*5=15>>15\nHe earned $60 mowing lawns because 4 x 15 = <<4*15=60>>60\nHe earned $35 shoveling "
    "driveways because 110 - 60 - 15 = <<110-60-15=35>>35\nHe shoveled 5 driveways because 35 / 7 = "
    "<<35/7=5>>5\n#### 5",
    "The discount is 20% of $1,250, which is 1,250 * 0.2 = $<<1,250*0.2=250>>250.\nSo the price is 1,250 - 250 = "
    "$<<1,250-250=1,000>>1,000.\n#### 1,000",
    "A third of the 10 cakes is 10/3 = <<10/3=3.33>>3.33 cakes, so about 3 each.\nWith 2 left over per box, "
    "that is 3*4+2 = <<3*4+2=14>>14.\n#### 14",
]


def test_gsm8k_real_looking_solutions_call_the_calculator_and_score():
    task = GSM8K("train", [{"question": f"Problem {i}?", "answer": answer} for i, answer in enumerate(REAL_LOOKING)])
    marks = calls = 0
    for solution, example in zip(REAL_LOOKING, (task[i] for i in range(len(task)))):
        content = example["messages"][-1]["content"]
        marks += len(ANNOTATION.findall(solution))
        for call, output in zip(content, content[1:]):
            if call["type"] == "python":
                calls += 1
                assert output["type"] == "python_output" and calculate(call["text"]) == output["text"]
        text = "".join(part["text"] for part in content)
        assert "<<" not in text  # every mark here is one the calculator reproduces
        assert example["answer"] == solution.rpartition("#### ")[2].replace(",", "")
        assert task.score(example, text) and not task.score(example, text + "\n#### 99999")
    assert calls == marks and marks > 40


def test_gsm8k_rows_without_a_final_number_are_dropped_and_eval_takes_rows(hub_server, tmp_path):
    rows = [{"question": "1+1?", "answer": "<<1+1=2>>2\n#### 2"}, {"question": "", "answer": "#### 3"},
            {"question": "No final line?", "answer": "It is 4."}, {"question": "Empty?", "answer": "#### "}]
    evals = GSM8K("eval", rows)
    assert (len(evals), evals.dropped, evals.split) == (1, 3, "eval")
    assert evals.prompt(0) == {"messages": [{"role": "user", "content": "1+1?"}]}
    hub_server(gsm8k_file(rows))
    train = GSM8K.from_hub(tmp_path)
    assert (len(train), train.dropped, train.split) == (1, 3, "train") and train[0] == evals[0]
