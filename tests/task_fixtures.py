"""Hand-written rows in the Hugging Face hub schemas of the 23 ADePT tasks, for the task-loader tests.

`FIXTURES[task]` has:
  files     {hub split: [row, ...]}  rows with every hub column and its type (ints stay ints, the
            nested MRQA / ReCoRD / MultiRC columns stay dicts of lists); 6 rows of the task per split
  fmt       the file format a test writes the rows in: "jsonl", "parquet" or "csv"
  expected  [{"split", "row", "source", "targets"}]: `row` indexes `files[split]` as written (before any
            filtering: MRQA files mix in rows of other subsets); source and targets are written out by
            hand from the formatting rules, never computed here.

Labels follow the hub's ClassLabel ids: GLUE rte/qnli 0 entailment 1 not_entailment, mrpc/qqp 1 = paraphrase,
mnli 0 entailment 1 neutral 2 contradiction, cb 0 entailment 1 contradiction 2 neutral, boolq/wic/wsc/multirc
0 False 1 True, yelp 0 negative 1 positive.

The few helpers below only fill in the derived columns of real rows (character and token offsets, MRQA
token lists) so they agree with the texts; they never touch `expected`.
"""

from __future__ import annotations

import hashlib
import re

# ---------------------------------------------------------------------------------------------------------
# helpers for derived columns


def _wic(word, sentence1, form1, sentence2, form2, idx, label):
    """A super_glue/wic row: start/end are the character span (end exclusive) of the word's form."""
    start1, start2 = sentence1.index(form1), sentence2.index(form2)
    return {
        "word": word,
        "sentence1": sentence1,
        "sentence2": sentence2,
        "start1": start1,
        "start2": start2,
        "end1": start1 + len(form1),
        "end2": start2 + len(form2),
        "idx": idx,
        "label": label,
    }


def _record(passage, query, mentions, answers, passage_idx, query_idx):
    """A super_glue/record row. `mentions` lists the entity mentions in their order in the passage; as in the
    hub builder, entity_spans holds every mention (end exclusive, sorted by start) and entities the unique
    texts; answers are the sorted unique answer texts."""
    spans = {"text": [], "start": [], "end": []}
    pos = 0
    for text in mentions:
        start = passage.index(text, pos)
        spans["text"].append(text)
        spans["start"].append(start)
        spans["end"].append(start + len(text))
        pos = start + len(text)
    assert set(answers) <= set(mentions) and list(answers) == sorted(set(answers)), answers
    return {
        "passage": passage,
        "query": query,
        "entities": sorted(set(mentions)),
        "entity_spans": spans,
        "answers": list(answers),
        "idx": {"passage": passage_idx, "query": query_idx},
    }


_TOKEN = re.compile(r"<[^>\s]+>|\[[A-Z]+\]|\w+(?:['.\-]\w+)*|[^\w\s]")


def _tokens(text):
    found = list(_TOKEN.finditer(text))
    return {"tokens": [m.group() for m in found], "offsets": [m.start() for m in found]}


def _mrqa(subset, question, context, answers):
    """A mrqa-workshop/mrqa row. detected_answers holds every gold answer found in the context with all its
    occurrences (char and token spans, both ends inclusive, as in MRQA); answers keeps every gold answer."""
    ctx = _tokens(context)
    detected = {"text": [], "char_spans": [], "token_spans": []}
    for answer in dict.fromkeys(answers):
        starts = [m.start() for m in re.finditer(re.escape(answer), context)]
        if not starts:
            continue
        ends = [s + len(answer) - 1 for s in starts]
        detected["text"].append(answer)
        detected["char_spans"].append({"start": starts, "end": ends})
        detected["token_spans"].append(
            {
                "start": [ctx["offsets"].index(s) for s in starts],
                "end": [max(i for i, o in enumerate(ctx["offsets"]) if o <= e) for e in ends],
            }
        )
    assert detected["text"], (question, answers)
    return {
        "subset": subset,
        "context": context,
        "context_tokens": ctx,
        "qid": hashlib.md5((subset + question).encode()).hexdigest(),
        "question": question,
        "question_tokens": _tokens(question),
        "detected_answers": detected,
        "answers": list(answers),
    }


def _mbpp(task_id, text, code, test_list, challenge_test_list=()):
    return {
        "task_id": task_id,
        "text": text,
        "code": code,
        "test_list": list(test_list),
        "test_setup_code": "",
        "challenge_test_list": list(challenge_test_list),
    }


def _scitail(sentence1, binary_parse, parse1, sentence2, parse2, gold):
    return {
        "sentence1_binary_parse": binary_parse,
        "sentence1_parse": parse1,
        "sentence1": sentence1,
        "sentence2_parse": parse2,
        "sentence2": sentence2,
        "annotator_labels": [gold],
        "gold_label": gold,
    }


FIXTURES: dict[str, dict] = {}

# ---------------------------------------------------------------------------------------------------------
# GLUE (nyu-mll/glue)

FIXTURES["mnli"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "premise": "The museum extended its opening hours during the summer festival.",
                "hypothesis": "The museum was open longer in the summer.",
                "label": 0,
                "idx": 0,
            },
            {
                "premise": "A group of volunteers planted trees along the riverbank on Saturday.",
                "hypothesis": "The volunteers were paid for their work.",
                "label": 1,
                "idx": 1,
            },
            {
                "premise": "The bakery on Elm Street closed permanently last year.",
                "hypothesis": "The bakery on Elm Street still sells bread every morning.",
                "label": 2,
                "idx": 2,
            },
            {
                "premise": "Most of the passengers slept through the overnight flight.",
                "hypothesis": "The flight took place at night.",
                "label": 0,
                "idx": 3,
            },
            {
                "premise": "The committee postponed its vote until more data was available.",
                "hypothesis": "The committee members disagreed about the budget.",
                "label": 1,
                "idx": 4,
            },
            {
                "premise": "She has never visited any country outside Europe.",
                "hypothesis": "She spent last winter traveling in Brazil.",
                "label": 2,
                "idx": 5,
            },
        ],
        "validation_matched": [
            {
                "premise": "The report was published two weeks after the election.",
                "hypothesis": "The report came out after the election.",
                "label": 0,
                "idx": 0,
            },
            {
                "premise": "He usually takes the train to work, but today he drove.",
                "hypothesis": "He drove because the trains were on strike.",
                "label": 1,
                "idx": 1,
            },
            {
                "premise": "The hotel has no swimming pool or fitness room.",
                "hypothesis": "Guests can swim in the hotel's indoor pool.",
                "label": 2,
                "idx": 2,
            },
            {
                "premise": "Tickets for the concert sold out within an hour.",
                "hypothesis": "The concert was popular.",
                "label": 0,
                "idx": 3,
            },
            {
                "premise": "The new policy applies to all employees hired after January.",
                "hypothesis": "Most employees support the new policy.",
                "label": 1,
                "idx": 4,
            },
            {
                "premise": "The village lies high in the mountains, far from any coast.",
                "hypothesis": "The village is a busy seaside port.",
                "label": 2,
                "idx": 5,
            },
        ],
        "validation_mismatched": [
            {
                "premise": "Please return all library books by the end of the month.",
                "hypothesis": "Library books are due at the end of the month.",
                "label": 0,
                "idx": 0,
            },
            {
                "premise": "Yeah, I grew up on a farm, so I know a bit about horses.",
                "hypothesis": "The speaker owns several horses today.",
                "label": 1,
                "idx": 1,
            },
            {
                "premise": "The letter from the bank arrived on Monday morning.",
                "hypothesis": "No mail was delivered on Monday.",
                "label": 2,
                "idx": 2,
            },
            {
                "premise": "Travelers should carry a valid passport at all times.",
                "hypothesis": "A passport is recommended for travelers.",
                "label": 0,
                "idx": 3,
            },
            {
                "premise": "Oh, the kids spent the whole afternoon at the lake.",
                "hypothesis": "The kids went swimming in the lake.",
                "label": 1,
                "idx": 4,
            },
            {
                "premise": "The recipe calls for two cups of flour and no sugar.",
                "hypothesis": "The recipe needs a cup of sugar.",
                "label": 2,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "premise: The museum extended its opening hours during the summer festival. "
            "hypothesis: The museum was open longer in the summer.",
            "targets": ["0"],
        },
    ],
}

FIXTURES["qqp"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "question1": "How can I improve my English pronunciation?",
                "question2": "What are the best ways to get better at pronouncing English words?",
                "label": 1,
                "idx": 0,
            },
            {
                "question1": "What is the best laptop for programming?",
                "question2": "How do I learn programming on my own?",
                "label": 0,
                "idx": 1,
            },
            {
                "question1": "Why is the sky blue?",
                "question2": "What makes the sky look blue during the day?",
                "label": 1,
                "idx": 2,
            },
            {
                "question1": "How do I start a vegetable garden?",
                "question2": "Which vegetables grow best in shade?",
                "label": 0,
                "idx": 3,
            },
            {
                "question1": "What are some good books on personal finance?",
                "question2": "Which personal finance books would you recommend?",
                "label": 1,
                "idx": 4,
            },
            {
                "question1": "Is it safe to drink tap water in Lisbon?",
                "question2": "What is the best time of year to visit Lisbon?",
                "label": 0,
                "idx": 5,
            },
        ],
        "validation": [
            {
                "question1": "How do I lose weight without going to the gym?",
                "question2": "What are ways to lose weight at home without a gym?",
                "label": 1,
                "idx": 0,
            },
            {
                "question1": "What is the meaning of life?",
                "question2": "What is the population of Tokyo?",
                "label": 0,
                "idx": 1,
            },
            {
                "question1": "Which is the best programming language to learn first?",
                "question2": "What programming language should a beginner start with?",
                "label": 1,
                "idx": 2,
            },
            {
                "question1": "How do airplanes stay in the air?",
                "question2": "How much does a pilot earn?",
                "label": 0,
                "idx": 3,
            },
            {
                "question1": "What are the symptoms of vitamin D deficiency?",
                "question2": "How can I tell if I am low on vitamin D?",
                "label": 1,
                "idx": 4,
            },
            {
                "question1": "Why do cats purr?",
                "question2": "Why do dogs wag their tails?",
                "label": 0,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question1: How can I improve my English pronunciation? "
            "question2: What are the best ways to get better at pronouncing English words?",
            "targets": ["1"],
        },
    ],
}

FIXTURES["qnli"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "question": "When was the first public library in the town opened?",
                "sentence": "The town's first public library opened its doors in 1887, funded by a local textile merchant.",
                "label": 0,
                "idx": 0,
            },
            {
                "question": "Who designed the new harbor bridge?",
                "sentence": "The harbor bridge carries about forty thousand vehicles each day.",
                "label": 1,
                "idx": 1,
            },
            {
                "question": "What is the main export of the region?",
                "sentence": "Coffee remains the region's main export, followed by bananas and cut flowers.",
                "label": 0,
                "idx": 2,
            },
            {
                "question": "How long is the hiking trail?",
                "sentence": "The trail was built by volunteers in the 1970s and is maintained by the park service.",
                "label": 1,
                "idx": 3,
            },
            {
                "question": "Which river flows through the capital?",
                "sentence": "The capital lies on both banks of the Varna River, which flows into the sea.",
                "label": 0,
                "idx": 4,
            },
            {
                "question": "What language is spoken in the northern provinces?",
                "sentence": "The northern provinces are known for their cold winters and pine forests.",
                "label": 1,
                "idx": 5,
            },
        ],
        "validation": [
            {
                "question": "How many species of birds live on the island?",
                "sentence": "More than 120 species of birds have been recorded on the island.",
                "label": 0,
                "idx": 0,
            },
            {
                "question": "Who founded the university?",
                "sentence": "The university is known for its engineering and medical schools.",
                "label": 1,
                "idx": 1,
            },
            {
                "question": "What year did the railway reach the city?",
                "sentence": "The railway reached the city in 1869, linking it to the coast.",
                "label": 0,
                "idx": 2,
            },
            {
                "question": "What is the height of the cathedral's spire?",
                "sentence": "The cathedral was badly damaged by an earthquake in the 18th century.",
                "label": 1,
                "idx": 3,
            },
            {
                "question": "Which team won the first championship?",
                "sentence": "The first championship was won by Rovers, who beat United in the final.",
                "label": 0,
                "idx": 4,
            },
            {
                "question": "How many people attended the festival?",
                "sentence": "The festival features music, food stalls and a parade through the old town.",
                "label": 1,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: When was the first public library in the town opened? "
            "sentence: The town's first public library opened its doors in 1887, funded by a local textile merchant.",
            "targets": ["0"],
        },
    ],
}

FIXTURES["sst2"] = {
    "fmt": "csv",
    "files": {
        "train": [
            {"sentence": "a warm , funny and surprisingly moving film .", "label": 1, "idx": 0},
            {"sentence": "the plot is thin and the jokes fall flat .", "label": 0, "idx": 1},
            {"sentence": "one of the most inventive animated features in years", "label": 1, "idx": 2},
            {"sentence": "a tedious exercise in style over substance ", "label": 0, "idx": 3},
            {"sentence": "the performances are uniformly excellent .", "label": 1, "idx": 4},
            {"sentence": "too long , too loud and too pleased with itself .", "label": 0, "idx": 5},
        ],
        "validation": [
            {"sentence": "it 's a charming and often affecting journey .", "label": 1, "idx": 0},
            {"sentence": "unflinchingly bleak and desperate", "label": 0, "idx": 1},
            {"sentence": "the director 's best work in a decade .", "label": 1, "idx": 2},
            {"sentence": "a dull , lifeless remake that nobody asked for .", "label": 0, "idx": 3},
            {"sentence": "smart , sharp and genuinely touching .", "label": 1, "idx": 4},
            {"sentence": "the dialogue is clumsy and the pacing is worse .", "label": 0, "idx": 5},
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence: a warm , funny and surprisingly moving film .",
            "targets": ["1"],
        },
    ],
}

FIXTURES["cola"] = {
    "fmt": "csv",
    "files": {
        "train": [
            {"sentence": "The children played in the garden all afternoon.", "label": 1, "idx": 0},
            {"sentence": "Them quickly left the room.", "label": 0, "idx": 1},
            {"sentence": "The book that I bought yesterday is on the table.", "label": 1, "idx": 2},
            {"sentence": "She seems sleeping.", "label": 0, "idx": 3},
            {"sentence": "What did you say that John bought?", "label": 1, "idx": 4},
            {"sentence": "Mary put the vase.", "label": 0, "idx": 5},
        ],
        "validation": [
            {"sentence": "The dog barked at the mailman.", "label": 1, "idx": 0},
            {"sentence": "The more you read, the more you understand.", "label": 1, "idx": 1},
            {"sentence": "He told that the train was late.", "label": 0, "idx": 2},
            {"sentence": "Sue gave the book to Bill.", "label": 1, "idx": 3},
            {"sentence": "Which girl did you meet the man who kissed?", "label": 0, "idx": 4},
            {"sentence": "It is raining in the valley.", "label": 1, "idx": 5},
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence: The children played in the garden all afternoon.",
            "targets": ["1"],
        },
    ],
}

FIXTURES["stsb"] = {
    "fmt": "csv",
    "files": {
        "train": [
            {
                "sentence1": "A man is playing a guitar on stage.",
                "sentence2": "A man plays the guitar in front of an audience.",
                "label": 3.75,
                "idx": 0,
            },
            {
                "sentence1": "A woman is slicing an onion.",
                "sentence2": "A dog is running through a field.",
                "label": 0.0,
                "idx": 1,
            },
            {
                "sentence1": "Three children are swimming in a lake.",
                "sentence2": "Three kids are swimming in a lake.",
                "label": 5.0,
                "idx": 2,
            },
            {
                "sentence1": "The stock market fell sharply on Monday.",
                "sentence2": "Shares dropped on Monday after weak earnings reports.",
                "label": 2.8,
                "idx": 3,
            },
            {
                "sentence1": "A cat is sleeping on the sofa.",
                "sentence2": "A cat is lying on a couch.",
                "label": 4.2,
                "idx": 4,
            },
            {
                "sentence1": "A man is cutting paper with scissors.",
                "sentence2": "A man is folding a sheet of paper.",
                "label": 1.6,
                "idx": 5,
            },
        ],
        "validation": [
            {
                "sentence1": "A plane is taking off from the runway.",
                "sentence2": "An airplane is departing from an airport.",
                "label": 4.4,
                "idx": 0,
            },
            {
                "sentence1": "A girl is riding a horse on the beach.",
                "sentence2": "A man is playing the piano.",
                "label": 0.0,
                "idx": 1,
            },
            {
                "sentence1": "The president will visit Japan next week.",
                "sentence2": "The president is scheduled to travel to Asia.",
                "label": 2.2,
                "idx": 2,
            },
            {
                "sentence1": "Two men are fighting in a parking lot.",
                "sentence2": "Two men are arguing outside a store.",
                "label": 1.8,
                "idx": 3,
            },
            {
                "sentence1": "A boy is kicking a soccer ball.",
                "sentence2": "A young boy kicks a football.",
                "label": 4.8,
                "idx": 4,
            },
            {
                "sentence1": "Oil prices rose after the announcement.",
                "sentence2": "The price of crude oil climbed following the news.",
                "label": 3.4,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence1: A man is playing a guitar on stage. "
            "sentence2: A man plays the guitar in front of an audience.",
            "targets": ["3.8"],
        },
        {
            "split": "train",
            "row": 2,
            "source": "sentence1: Three children are swimming in a lake. sentence2: Three kids are swimming in a lake.",
            "targets": ["5.0"],
        },
    ],
}

FIXTURES["mrpc"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "sentence1": "The company said its quarterly profit rose 12 percent to $48 million.",
                "sentence2": "Quarterly profit climbed 12 percent to $48 million, the company said.",
                "label": 1,
                "idx": 0,
            },
            {
                "sentence1": "Police arrested two men on Friday in connection with the robbery.",
                "sentence2": "The robbery took place late on Thursday night at a jewelry store downtown.",
                "label": 0,
                "idx": 1,
            },
            {
                "sentence1": "The senator announced she would not seek re-election next year.",
                "sentence2": "The senator said she will not run for another term next year.",
                "label": 1,
                "idx": 2,
            },
            {
                "sentence1": "Shares of the airline fell 5 percent in early trading.",
                "sentence2": "The airline plans to add ten new routes to Asia this summer.",
                "label": 0,
                "idx": 3,
            },
            {
                "sentence1": "The storm knocked out power to about 30,000 homes across the county.",
                "sentence2": "Roughly 30,000 homes in the county lost power because of the storm.",
                "label": 1,
                "idx": 4,
            },
            {
                "sentence1": "The museum will reopen in March after a two-year renovation.",
                "sentence2": "Museum officials declined to comment on the cost of the renovation.",
                "label": 0,
                "idx": 5,
            },
        ],
        "validation": [
            {
                "sentence1": "The court ruled that the law was unconstitutional.",
                "sentence2": "The law was declared unconstitutional by the court.",
                "label": 1,
                "idx": 0,
            },
            {
                "sentence1": "The software update will be released on Tuesday.",
                "sentence2": "Users have complained about the battery life of the phone.",
                "label": 0,
                "idx": 1,
            },
            {
                "sentence1": "About 2,500 workers will lose their jobs when the plant closes.",
                "sentence2": "The plant closure will cost roughly 2,500 jobs.",
                "label": 1,
                "idx": 2,
            },
            {
                "sentence1": "The governor signed the budget bill late Wednesday.",
                "sentence2": "Lawmakers spent months debating tax increases in the budget.",
                "label": 0,
                "idx": 3,
            },
            {
                "sentence1": "The film earned $60 million in its opening weekend.",
                "sentence2": "In its first weekend, the movie took in $60 million.",
                "label": 1,
                "idx": 4,
            },
            {
                "sentence1": "The bank raised interest rates by a quarter point.",
                "sentence2": "Analysts expect inflation to slow later this year.",
                "label": 0,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence1: The company said its quarterly profit rose 12 percent to $48 million. "
            "sentence2: Quarterly profit climbed 12 percent to $48 million, the company said.",
            "targets": ["1"],
        },
    ],
}

FIXTURES["rte"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "sentence1": "The city council approved a plan on Tuesday to build three new schools in the eastern "
                "district by 2026.",
                "sentence2": "New schools will be built in the eastern district.",
                "label": 0,
                "idx": 0,
            },
            {
                "sentence1": "Heavy rain caused the river to overflow, flooding dozens of homes near the old mill.",
                "sentence2": "The old mill was destroyed by fire.",
                "label": 1,
                "idx": 1,
            },
            {
                "sentence1": "The company, founded in Oslo in 1994, now employs more than 2,000 people across Europe.",
                "sentence2": "The company was founded in Oslo.",
                "label": 0,
                "idx": 2,
            },
            {
                "sentence1": "Researchers found that the drug reduced symptoms in about half of the patients tested.",
                "sentence2": "The drug cured all patients.",
                "label": 1,
                "idx": 3,
            },
            {
                "sentence1": "After a long negotiation, the union accepted a wage increase of four percent.",
                "sentence2": "The union agreed to a pay raise.",
                "label": 0,
                "idx": 4,
            },
            {
                "sentence1": "The author's third novel, published last spring, has been translated into twelve languages.",
                "sentence2": "The author has written only one book.",
                "label": 1,
                "idx": 5,
            },
        ],
        "validation": [
            {
                "sentence1": "The volcano erupted on Sunday, sending ash more than ten kilometers into the sky.",
                "sentence2": "A volcano erupted.",
                "label": 0,
                "idx": 0,
            },
            {
                "sentence1": "The minister met with farmers to discuss the drought, which has lasted two years.",
                "sentence2": "The drought ended last month.",
                "label": 1,
                "idx": 1,
            },
            {
                "sentence1": "Born in Vienna, the conductor led the orchestra for almost thirty years.",
                "sentence2": "The conductor was born in Vienna.",
                "label": 0,
                "idx": 2,
            },
            {
                "sentence1": "The online retailer reported higher sales during the holiday season.",
                "sentence2": "The retailer closed all of its stores.",
                "label": 1,
                "idx": 3,
            },
            {
                "sentence1": "Two climbers reached the summit on Friday despite strong winds.",
                "sentence2": "Climbers reached the top of the mountain.",
                "label": 0,
                "idx": 4,
            },
            {
                "sentence1": "The bridge, which opened in 1932, is painted every ten years.",
                "sentence2": "The bridge was opened in 2002.",
                "label": 1,
                "idx": 5,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence1: The city council approved a plan on Tuesday to build three new schools in the eastern "
            "district by 2026. sentence2: New schools will be built in the eastern district.",
            "targets": ["0"],
        },
    ],
}

# ---------------------------------------------------------------------------------------------------------
# SuperGLUE (aps/super_glue)

_MULTIRC_P0 = (
    "<b>Sent 1: </b>Maria opened a small bakery in Lisbon in 2015.<br>"
    "<b>Sent 2: </b>At first she sold only bread and coffee.<br>"
    "<b>Sent 3: </b>Two years later she added pastries, and sales doubled."
)
_MULTIRC_P1 = (
    "<b>Sent 1: </b>The old lighthouse stopped working during a storm in 1998.<br>"
    "<b>Sent 2: </b>Volunteers repaired it over the next three summers.<br>"
    "<b>Sent 3: </b>Today it guides fishing boats into the harbor again.<br>"
)
_MULTIRC_V0 = (
    "<b>Sent 1: </b>The town of Millbrook held its first farmers market in May.<br>"
    "<b>Sent 2: </b>More than forty vendors sold vegetables, cheese and honey.<br>"
    "<b>Sent 3: </b>The mayor said the market would run every Saturday until October.<br>"
)
_MULTIRC_V1 = (
    "<b>Sent 1: </b>Jonah trained for six months before running his first marathon.<br>"
    "<b>Sent 2: </b>He finished the race in just under four hours.<br>"
    "<b>Sent 3: </b>His sister Ava ran beside him for the last five miles.<br>"
)


def _multirc(paragraph, question, answer, p, q, a, label):
    return {
        "paragraph": paragraph,
        "question": question,
        "answer": answer,
        "idx": {"paragraph": p, "question": q, "answer": a},
        "label": label,
    }


FIXTURES["multirc"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _multirc(_MULTIRC_P0, "What did Maria add to her bakery two years after opening?", "Pastries", 0, 0, 0, 1),
            _multirc(
                _MULTIRC_P0, "What did Maria add to her bakery two years after opening?", "Sandwiches", 0, 0, 1, 0
            ),
            _multirc(_MULTIRC_P0, "Where is Maria's bakery?", "In Lisbon", 0, 1, 2, 1),
            _multirc(_MULTIRC_P1, "Who repaired the lighthouse?", "Volunteers", 1, 2, 3, 1),
            _multirc(_MULTIRC_P1, "Who repaired the lighthouse?", "The city government", 1, 2, 4, 0),
            _multirc(_MULTIRC_P1, "When did the lighthouse stop working?", "In 2005", 1, 3, 5, 0),
        ],
        "validation": [
            _multirc(_MULTIRC_V0, "How often will the market run?", "Every Saturday", 0, 0, 0, 1),
            _multirc(_MULTIRC_V0, "How often will the market run?", "Once a month", 0, 0, 1, 0),
            _multirc(_MULTIRC_V0, "What did the vendors sell?", "Vegetables, cheese and honey", 0, 1, 2, 1),
            _multirc(_MULTIRC_V1, "Who ran with Jonah at the end of the race?", "His sister Ava", 1, 2, 3, 1),
            _multirc(_MULTIRC_V1, "Who ran with Jonah at the end of the race?", "His coach", 1, 2, 4, 0),
            _multirc(_MULTIRC_V1, "How long did Jonah train for the marathon?", "Two years", 1, 3, 5, 0),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: What did Maria add to her bakery two years after opening? answer: Pastries "
            "paragraph: Sent 1: Maria opened a small bakery in Lisbon in 2015. Sent 2: At first she sold only "
            "bread and coffee. Sent 3: Two years later she added pastries, and sales doubled.",
            "targets": ["1"],
        },
    ],
}

FIXTURES["boolq"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "question": "is the amazon river longer than the nile",
                "passage": "Amazon River -- The Amazon River in South America is the largest river by discharge "
                "volume of water in the world. Most sources consider it the second longest river, slightly "
                "shorter than the Nile.",
                "idx": 0,
                "label": 0,
            },
            {
                "question": "can you see the great wall of china from the moon",
                "passage": "Great Wall of China -- Contrary to a popular myth, the Great Wall of China is not "
                "visible to the naked eye from the Moon. Astronauts have reported that it is hard to see even "
                "from low Earth orbit.",
                "idx": 1,
                "label": 0,
            },
            {
                "question": "is a tomato a fruit",
                "passage": "Tomato -- Botanically, a tomato is a fruit, specifically a berry, because it develops "
                "from the ovary of a flowering plant and contains seeds.",
                "idx": 2,
                "label": 1,
            },
            {
                "question": "does canada have a president",
                "passage": "Politics of Canada -- Canada is a constitutional monarchy and parliamentary democracy. "
                "The head of government is the Prime Minister, and the country has no office of president.",
                "idx": 3,
                "label": 0,
            },
            {
                "question": "is spanish the official language of brazil",
                "passage": "Languages of Brazil -- Portuguese is the official and national language of Brazil and "
                "is spoken by almost the entire population.",
                "idx": 4,
                "label": 0,
            },
            {
                "question": "do penguins live in the southern hemisphere",
                "passage": "Penguin -- Penguins are a group of flightless aquatic birds that live almost "
                "exclusively in the Southern Hemisphere, with only one species found north of the equator.",
                "idx": 5,
                "label": 1,
            },
        ],
        "validation": [
            {
                "question": "is mount everest the tallest mountain on earth",
                "passage": "Mount Everest -- Mount Everest is Earth's highest mountain above sea level, located in "
                "the Mahalangur Himal sub-range of the Himalayas.",
                "idx": 0,
                "label": 1,
            },
            {
                "question": "do bats lay eggs",
                "passage": "Bat -- Bats are mammals; like almost all mammals, they give birth to live young and "
                "feed them with milk.",
                "idx": 1,
                "label": 0,
            },
            {
                "question": "is the pacific ocean the largest ocean",
                "passage": "Pacific Ocean -- The Pacific Ocean is the largest and deepest of Earth's five oceanic "
                "divisions.",
                "idx": 2,
                "label": 1,
            },
            {
                "question": "was the eiffel tower built for the 1900 world's fair",
                "passage": "Eiffel Tower -- The tower was built as the entrance arch to the 1889 World's Fair in "
                "Paris.",
                "idx": 3,
                "label": 0,
            },
            {
                "question": "can an ostrich fly",
                "passage": "Ostrich -- The ostrich is a large flightless bird native to Africa; it cannot fly but "
                "is a very fast runner.",
                "idx": 4,
                "label": 0,
            },
            {
                "question": "is venus hotter than mercury",
                "passage": "Venus -- Although Mercury is closer to the Sun, Venus has the hottest surface of any "
                "planet because of its thick carbon dioxide atmosphere.",
                "idx": 5,
                "label": 1,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: is the amazon river longer than the nile passage: Amazon River -- The Amazon River "
            "in South America is the largest river by discharge volume of water in the world. Most sources "
            "consider it the second longest river, slightly shorter than the Nile.",
            "targets": ["0"],
        },
    ],
}

FIXTURES["wic"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            _wic(
                "bank",
                "She sat on the bank of the river to watch the boats.",
                "bank",
                "He deposited the check at the bank before noon.",
                "bank",
                0,
                0,
            ),
            _wic(
                "run",
                "She runs a small bookstore downtown.",
                "runs",
                "The company is run by two brothers.",
                "run",
                1,
                1,
            ),
            _wic(
                "light",
                "The light from the lamp filled the room.",
                "light",
                "This suitcase is very light.",
                "light",
                2,
                0,
            ),
            _wic(
                "break",
                "Let's take a short break after lunch.",
                "break",
                "We had a ten-minute break between classes.",
                "break",
                3,
                1,
            ),
            _wic("cold", "She caught a cold last week.", "cold", "The water in the lake is cold.", "cold", 4, 0),
            _wic(
                "play",
                "The children play in the park every afternoon.",
                "play",
                "The kids played outside until dinner.",
                "played",
                5,
                1,
            ),
        ],
        "validation": [
            _wic("bright", "The room was bright and sunny.", "bright", "She is a bright student.", "bright", 0, 0),
            _wic(
                "draw",
                "He likes to draw animals.",
                "draw",
                "The children drew pictures of their houses.",
                "drew",
                1,
                1,
            ),
            _wic("spring", "The flowers bloom in spring.", "spring", "A spring in the mattress broke.", "spring", 2, 0),
            _wic("open", "Please open the window.", "open", "She opened the door for her guest.", "opened", 3, 1),
            _wic(
                "fair", "The judge made a fair decision.", "fair", "We rode the ferris wheel at the fair.", "fair", 4, 0
            ),
            _wic("catch", "Try to catch the ball.", "catch", "He caught the ball with one hand.", "caught", 5, 1),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence1: She sat on the bank of the river to watch the boats. "
            "sentence2: He deposited the check at the bank before noon. word: bank",
            "targets": ["0"],
        },
    ],
}


def _wsc(text, span1_index, span2_index, span1_text, span2_text, idx, label):
    return {
        "text": text,
        "span1_index": span1_index,
        "span2_index": span2_index,
        "span1_text": span1_text,
        "span2_text": span2_text,
        "idx": idx,
        "label": label,
    }


FIXTURES["wsc"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            _wsc(
                "The new engineer fixed the printer before lunch because she knew the model well.",
                0,
                9,
                "The new engineer",
                "she",
                0,
                1,
            ),
            _wsc("The dog chased the cat up the tree, but it could not climb down again.", 0, 9, "The dog", "it", 1, 0),
            _wsc(
                "Sam lent his bicycle to Leo because he was walking to the station in the rain.",
                5,
                7,
                "Leo",
                "he",
                2,
                1,
            ),
            _wsc(
                "When he reached the platform, Tom saw that the last train had already left.",
                5,
                1,
                "Tom",
                "he",
                3,
                1,
            ),
            _wsc(
                "The parents refused the teenagers a late curfew because they worried about safety.",
                3,
                9,
                "the teenagers",
                "they",
                4,
                0,
            ),
            _wsc("Lucy poured water from the jug into the glass until it was full.", 7, 10, "the glass", "it", 5, 1),
        ],
        "validation": [
            _wsc(
                "The man could not lift his son because he was so weak and tired.",
                0,
                8,
                "The man",
                "he",
                0,
                1,
            ),
            _wsc("Anna called Beth because she wanted to borrow a ladder.", 2, 4, "Beth", "she", 1, 0),
            _wsc(
                "The suitcase would not fit in the trunk because it was too small.",
                6,
                9,
                "the trunk",
                "it",
                2,
                1,
            ),
            _wsc(
                "The lawyer asked the witness a question, but he refused to answer it.", 3, 8, "the witness", "he", 3, 1
            ),
            _wsc("The cup fell on the plate and it broke into pieces.", 0, 7, "The cup", "it", 4, 0),
            _wsc("Because she was tired, Emma went to bed early.", 4, 1, "Emma", "she", 5, 1),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "text: * The new engineer * fixed the printer before lunch because # she # knew the model well.",
            "targets": ["1"],
        },
        {
            "split": "train",
            "row": 3,
            "source": "text: When # he # reached the platform, * Tom * saw that the last train had already left.",
            "targets": ["1"],
        },
    ],
}

FIXTURES["cb"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "premise": "B: I think the new mall has made traffic worse. A: Yeah, I don't think anyone expected "
                "so many cars.",
                "hypothesis": "anyone expected so many cars",
                "idx": 0,
                "label": 1,
            },
            {
                "premise": "It was late when Helen got home. She suspected that the meeting had gone badly for her "
                "brother.",
                "hypothesis": "the meeting had gone badly for her brother",
                "idx": 1,
                "label": 2,
            },
            {
                "premise": "A: Did you see the game last night? B: I did. I know that the team played much better "
                "in the second half.",
                "hypothesis": "the team played much better in the second half",
                "idx": 2,
                "label": 0,
            },
            {
                "premise": "The letter was still sealed on the desk. Clearly nobody had opened it since Monday.",
                "hypothesis": "somebody had opened it since Monday",
                "idx": 3,
                "label": 1,
            },
            {
                "premise": "B: Do you think the new manager will stay? A: I'm not sure that she will stay past the "
                "summer.",
                "hypothesis": "she will stay past the summer",
                "idx": 4,
                "label": 2,
            },
            {
                "premise": "Peter looked at the dark sky and realized that the storm was coming closer.",
                "hypothesis": "the storm was coming closer",
                "idx": 5,
                "label": 0,
            },
        ],
        "validation": [
            {
                "premise": "She opened the envelope and saw that she had been accepted to the program.",
                "hypothesis": "she had been accepted to the program",
                "idx": 0,
                "label": 0,
            },
            {
                "premise": "A: Is the bakery open on Sundays? B: I don't believe it is open on Sundays.",
                "hypothesis": "it is open on Sundays",
                "idx": 1,
                "label": 1,
            },
            {
                "premise": "Tom wondered whether his brother had already left for the airport.",
                "hypothesis": "his brother had already left for the airport",
                "idx": 2,
                "label": 2,
            },
            {
                "premise": "The doctor confirmed that the bone was broken in two places.",
                "hypothesis": "the bone was broken in two places",
                "idx": 3,
                "label": 0,
            },
            {
                "premise": "B: Will they finish the road by winter? A: I doubt that they will finish it this year.",
                "hypothesis": "they will finish it this year",
                "idx": 4,
                "label": 1,
            },
            {
                "premise": "Maybe, she thought, the neighbors had gone away for the weekend.",
                "hypothesis": "the neighbors had gone away for the weekend",
                "idx": 5,
                "label": 2,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "premise: B: I think the new mall has made traffic worse. A: Yeah, I don't think anyone "
            "expected so many cars. hypothesis: anyone expected so many cars",
            "targets": ["1"],
        },
    ],
}

FIXTURES["record"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _record(
                "(CNN) -- The city of Lyon opened a new bridge on Sunday, officials said. Mayor Anne Dubois cut "
                "the ribbon as crowds cheered.\n@highlight\nLyon opens the Pont Neuf bridge after two years of "
                "work\n@highlight\nDubois says the bridge will ease traffic",
                "@placeholder said the new crossing would cut commuting times in half.",
                ["CNN", "Lyon", "Anne Dubois", "Lyon", "Pont Neuf", "Dubois"],
                ["Anne Dubois", "Dubois"],
                0,
                0,
            ),
            _record(
                "(CNN) -- Riverside United won the regional cup on Saturday with a late goal from Omar Haddad. "
                "The club had not lifted a trophy since 1987.\n@highlight\nFans sang 'We are the champions!'"
                "\n@highlight\nHaddad scored in the 89th minute\n@highlight\nRiverside United meet Northfield in "
                "the next round",
                "The win was the first for @placeholder in more than three decades.",
                ["CNN", "Riverside United", "Omar Haddad", "Haddad", "Riverside United", "Northfield"],
                ["Riverside United"],
                1,
                1,
            ),
            _record(
                "(CNN) -- Scientists in Norway have found a 1,000-year-old Viking sword buried in a farmer's field "
                "near Bergen. The farmer, Lars Nilsen, spotted the blade while plowing.\n@highlight\nViking sword "
                "found near Bergen\n@highlight\nLars Nilsen says he almost threw it away",
                "Archaeologists from @placeholder's national museum will study the weapon.",
                ["CNN", "Norway", "Viking", "Bergen", "Lars Nilsen", "Viking", "Bergen", "Lars Nilsen"],
                ["Norway"],
                2,
                2,
            ),
            _record(
                "By Daily Mail Reporter. A rescue dog named Bella has been honored for finding a missing hiker in "
                "the Scottish Highlands.\n@highlight\nBella found the hiker after a six-hour search\n@highlight\n"
                "The hiker, Emma Ross, had broken her ankle",
                "@placeholder was taken to hospital in Inverness and is recovering.",
                ["Daily Mail", "Bella", "Scottish Highlands", "Bella", "Emma Ross"],
                ["Emma Ross"],
                3,
                3,
            ),
            _record(
                "(CNN) -- Tesla unveiled a new battery factory in Nevada on Thursday, saying it would create 3,000 "
                "jobs.\n@highlight\nThe factory is the company's largest so far\n@highlight\nNevada officials "
                "welcome the investment",
                "Officials in @placeholder said the plant would transform the local economy.",
                ["CNN", "Tesla", "Nevada", "Nevada"],
                ["Nevada"],
                4,
                4,
            ),
            _record(
                "(CNN) -- Japanese swimmer Rina Sato broke the world record in the 200m butterfly at the "
                "championships in Budapest.\n@highlight\nSato finished in 2:03.41\n@highlight\nShe beat the old "
                "record set by Emily Clark in 2019",
                '"I never thought I could beat @placeholder\'s time," the 19-year-old said.',
                ["CNN", "Japanese", "Rina Sato", "Budapest", "Sato", "Emily Clark"],
                ["Emily Clark"],
                5,
                5,
            ),
        ],
        "validation": [
            _record(
                "(CNN) -- Heavy flooding has forced thousands of people from their homes in southern Germany, "
                "officials said Monday.\n@highlight\nRivers burst their banks in Bavaria\n@highlight\nChancellor "
                "visits flooded towns",
                "Emergency crews in @placeholder worked through the night to reinforce the dams.",
                ["CNN", "Germany", "Bavaria"],
                ["Bavaria"],
                0,
                0,
            ),
            _record(
                "(CNN) -- The Louvre in Paris has reopened after a three-day strike by museum staff.\n@highlight\n"
                "Staff protested over crowding and pay\n@highlight\nThe Louvre welcomed 9 million visitors last year",
                "A spokesperson for the @placeholder said the museum would hire more guards.",
                ["CNN", "Louvre", "Paris", "Louvre"],
                ["Louvre"],
                1,
                1,
            ),
            _record(
                "By Associated Press. Astronomers using the James Webb telescope have spotted water vapor around a "
                "distant planet.\n@highlight\nThe planet orbits a star 120 light years away\n@highlight\nNASA "
                "calls the discovery 'exciting'",
                "Scientists at @placeholder said more observations are planned.",
                ["Associated Press", "James Webb", "NASA"],
                ["NASA"],
                2,
                2,
            ),
            _record(
                "(CNN) -- Brazilian forward Lucas Silva scored twice as Santos beat Flamengo 3-1 on Sunday."
                "\n@highlight\nSilva's goals came in the second half\n@highlight\nSantos move to the top of the "
                "table",
                "@placeholder fans celebrated in the streets after the match.",
                ["CNN", "Brazilian", "Lucas Silva", "Santos", "Flamengo", "Silva", "Santos"],
                ["Santos"],
                3,
                3,
            ),
            _record(
                "(CNN) -- A rare white whale has been spotted off the coast of Australia for the first time this "
                "year.\n@highlight\nThe whale, nicknamed Migaloo, was seen near Byron Bay\n@highlight\nResidents "
                "gathered on the cliffs to watch",
                "Marine experts believe @placeholder is about 30 years old.",
                ["CNN", "Australia", "Migaloo", "Byron Bay"],
                ["Migaloo"],
                4,
                4,
            ),
            _record(
                "By Daily Mail Reporter. The British Museum will return a collection of bronze statues to Nigeria, "
                "its director announced.\n@highlight\nThe statues were taken from Benin City in 1897\n@highlight\n"
                "Nigeria has asked for their return for decades",
                "Officials in @placeholder welcomed the decision.",
                ["Daily Mail", "British Museum", "Nigeria", "Benin City", "Nigeria"],
                ["Nigeria"],
                5,
                5,
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "query: @placeholder said the new crossing would cut commuting times in half. "
            "entities: Anne Dubois, CNN, Dubois, Lyon, Pont Neuf "
            "passage: (CNN) -- The city of Lyon opened a new bridge on Sunday, officials said. Mayor Anne Dubois "
            "cut the ribbon as crowds cheered. Lyon opens the Pont Neuf bridge after two years of work. Dubois "
            "says the bridge will ease traffic",
            "targets": ["Anne Dubois", "Dubois"],
        },
        {
            "split": "train",
            "row": 1,
            "source": "query: The win was the first for @placeholder in more than three decades. "
            "entities: CNN, Haddad, Northfield, Omar Haddad, Riverside United "
            "passage: (CNN) -- Riverside United won the regional cup on Saturday with a late goal from Omar "
            "Haddad. The club had not lifted a trophy since 1987. Fans sang 'We are the champions!' Haddad "
            "scored in the 89th minute. Riverside United meet Northfield in the next round",
            "targets": ["Riverside United"],
        },
    ],
}

# ---------------------------------------------------------------------------------------------------------
# MRQA (mrqa-workshop/mrqa): every fixture mixes in rows of other subsets, which the loader must drop.

FIXTURES["nq"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _mrqa(
                "NaturalQuestionsShort",
                "who painted the ceiling of the sistine chapel",
                "<P> The ceiling of the Sistine Chapel was painted by Michelangelo between 1508 and 1512 , "
                "commissioned by Pope Julius II . </P>",
                ["Michelangelo"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "when did the berlin wall come down",
                "<P> The Berlin Wall fell on 9 November 1989 , when East German authorities opened the border "
                "crossings . </P>",
                ["9 November 1989"],
            ),
            _mrqa(
                "SQuAD",
                "What is the capital of Kenya?",
                "Nairobi is the capital and largest city of Kenya. It lies on the Nairobi River in the south of "
                "the country.",
                ["Nairobi"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "how many strings does a standard violin have",
                "<P> A standard violin has four strings tuned in perfect fifths : G , D , A and E . </P>",
                ["four"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "what is the largest planet in the solar system",
                "<P> Jupiter is the fifth planet from the Sun and the largest in the Solar System . </P>",
                ["Jupiter"],
            ),
            _mrqa(
                "HotpotQA",
                "Which city hosted the 1992 Summer Olympics and is the capital of Catalonia?",
                "[PAR] [TLE] 1992 Summer Olympics [SEP] The 1992 Summer Olympics were held in Barcelona, Spain. "
                "[PAR] [TLE] Catalonia [SEP] Catalonia is an autonomous community of Spain whose capital is "
                "Barcelona.",
                ["Barcelona"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "who wrote the novel pride and prejudice",
                "<P> Pride and Prejudice is an 1813 novel of manners written by Jane Austen . </P>",
                ["Jane Austen"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "what is the boiling point of water in fahrenheit",
                "<P> At sea level , water boils at 212 ° F ( 100 ° C ) . </P>",
                ["212 ° F"],
            ),
        ],
        "validation": [
            _mrqa(
                "NaturalQuestionsShort",
                "who is the author of the hobbit",
                "<P> The Hobbit is a children 's fantasy novel by English author J. R. R. Tolkien , published in "
                "1937 . </P>",
                ["J. R. R. Tolkien", "Tolkien"],
            ),
            _mrqa(
                "TriviaQA-web",
                "Which element has the chemical symbol Fe?",
                "Iron is a chemical element with symbol Fe and atomic number 26. It is the most common element on "
                "Earth by mass.",
                ["Iron"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "how many players are on a soccer team on the field",
                "<P> Each team has eleven players on the field , including one goalkeeper . </P>",
                ["eleven"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "where is the great barrier reef located",
                "<P> The Great Barrier Reef is located in the Coral Sea , off the coast of Queensland , "
                "Australia . </P>",
                ["in the Coral Sea", "off the coast of Queensland , Australia"],
            ),
            _mrqa(
                "NewsQA",
                "What did the mayor announce?",
                "(CNN) -- The mayor of Springfield announced a new recycling program on Monday, saying it would "
                "begin in April.",
                ["a new recycling program"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "what is the fastest land animal",
                "<P> The cheetah is the fastest land animal , capable of running at 80 to 98 km / h . </P>",
                ["The cheetah", "cheetah"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "when was the eiffel tower completed",
                "<P> Construction of the Eiffel Tower was completed in March 1889 , in time for the World 's "
                "Fair . </P>",
                ["March 1889", "1889"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "who discovered penicillin",
                "<P> Penicillin was discovered in 1928 by Scottish scientist Alexander Fleming . </P>",
                ["Alexander Fleming"],
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: who painted the ceiling of the sistine chapel context: <P> The ceiling of the "
            "Sistine Chapel was painted by Michelangelo between 1508 and 1512 , commissioned by Pope Julius II . "
            "</P>",
            "targets": ["Michelangelo"],
        },
        {
            "split": "train",
            "row": 3,
            "source": "question: how many strings does a standard violin have context: <P> A standard violin has "
            "four strings tuned in perfect fifths : G , D , A and E . </P>",
            "targets": ["four"],
        },
    ],
}

FIXTURES["hotpotqa"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _mrqa(
                "HotpotQA",
                "The composer of the opera Carmen was born in which city?",
                "[PAR] [TLE] Carmen [SEP] Carmen is an opera in four acts by the French composer Georges Bizet. "
                "[PAR] [TLE] Georges Bizet [SEP] Georges Bizet was a French composer born in Paris in 1838.",
                ["Paris"],
            ),
            _mrqa(
                "HotpotQA",
                "Which country is home to the university where Niels Bohr earned his doctorate?",
                "[PAR] [TLE] Niels Bohr [SEP] Niels Bohr earned his doctorate at the University of Copenhagen in "
                "1911. [PAR] [TLE] University of Copenhagen [SEP] The University of Copenhagen is the oldest "
                "university in Denmark.",
                ["Denmark"],
            ),
            _mrqa(
                "SQuAD",
                "In what year did the university open its medical school?",
                "The university opened its medical school in 1893, and the first class graduated four years later.",
                ["1893"],
            ),
            _mrqa(
                "HotpotQA",
                "What river flows through the city where the Charles Bridge is located?",
                "[PAR] [TLE] Charles Bridge [SEP] The Charles Bridge is a medieval stone bridge in Prague. "
                "[PAR] [TLE] Prague [SEP] Prague is the capital of the Czech Republic and is situated on the "
                "Vltava river.",
                ["Vltava"],
            ),
            _mrqa(
                "NaturalQuestionsShort",
                "who sang the original version of respect",
                "<P> Respect is a song written and originally released by Otis Redding in 1965 . </P>",
                ["Otis Redding"],
            ),
            _mrqa(
                "HotpotQA",
                "Which band released the album that contains the song Yellow Submarine?",
                '[PAR] [TLE] Yellow Submarine (song) [SEP] "Yellow Submarine" is a song from the 1966 album '
                "Revolver. [PAR] [TLE] Revolver (Beatles album) [SEP] Revolver is the seventh studio album by the "
                "English rock band the Beatles.",
                ["the Beatles"],
            ),
            _mrqa(
                "HotpotQA",
                "What is the nationality of the architect who designed the Sydney Opera House?",
                "[PAR] [TLE] Sydney Opera House [SEP] The Sydney Opera House was designed by the architect Jørn "
                "Utzon. [PAR] [TLE] Jørn Utzon [SEP] Jørn Utzon was a Danish architect.",
                ["Danish"],
            ),
            _mrqa(
                "HotpotQA",
                "The author of Frankenstein was the daughter of which philosopher?",
                "[PAR] [TLE] Frankenstein [SEP] Frankenstein is an 1818 novel written by Mary Shelley. "
                "[PAR] [TLE] Mary Shelley [SEP] Mary Shelley was the daughter of the philosopher William Godwin.",
                ["William Godwin"],
            ),
        ],
        "validation": [
            _mrqa(
                "HotpotQA",
                "Which city is the birthplace of the composer of The Four Seasons?",
                "[PAR] [TLE] The Four Seasons (Vivaldi) [SEP] The Four Seasons is a group of four violin concertos "
                "by Antonio Vivaldi. [PAR] [TLE] Antonio Vivaldi [SEP] Antonio Vivaldi was an Italian composer "
                "born in Venice in 1678.",
                ["Venice", "Venice, Italy"],
            ),
            _mrqa(
                "NewsQA",
                "Where did the ferry sink?",
                "(CNN) -- A passenger ferry sank off the coast of Sulawesi on Tuesday, officials said.",
                ["off the coast of Sulawesi"],
            ),
            _mrqa(
                "HotpotQA",
                "What sport did the winner of the 1998 Ballon d'Or play?",
                "[PAR] [TLE] 1998 Ballon d'Or [SEP] The 1998 Ballon d'Or was awarded to Zinedine Zidane. "
                "[PAR] [TLE] Zinedine Zidane [SEP] Zinedine Zidane is a French former professional football player.",
                ["football"],
            ),
            _mrqa(
                "HotpotQA",
                "Whom did the king who expanded the Palace of Versailles marry in 1660?",
                "[PAR] [TLE] Palace of Versailles [SEP] The Palace of Versailles was greatly expanded by King "
                "Louis XIV. [PAR] [TLE] Louis XIV [SEP] Louis XIV married Maria Theresa of Spain in 1660.",
                ["Maria Theresa of Spain", "Maria Theresa"],
            ),
            _mrqa(
                "SearchQA",
                'this "father of medicine" gave his name to an oath taken by doctors',
                "[DOC] [TLE] Hippocratic Oath - Wikipedia [PAR] The Hippocratic Oath is an oath of ethics "
                "historically taken by physicians, named after Hippocrates.",
                ["Hippocrates"],
            ),
            _mrqa(
                "HotpotQA",
                "How many known moons does the planet discovered by William Herschel have?",
                "[PAR] [TLE] William Herschel [SEP] William Herschel discovered the planet Uranus in 1781. "
                "[PAR] [TLE] Uranus [SEP] Uranus has 28 known moons.",
                ["28"],
            ),
            _mrqa(
                "HotpotQA",
                "The Louvre is located in the capital of which country?",
                "[PAR] [TLE] Louvre [SEP] The Louvre is the world's most-visited museum, located in Paris. "
                "[PAR] [TLE] Paris [SEP] Paris is the capital and most populous city of France.",
                ["France"],
            ),
            _mrqa(
                "HotpotQA",
                "Which language is spoken in the country where the city of Porto is located?",
                "[PAR] [TLE] Porto [SEP] Porto is the second-largest city in Portugal. [PAR] [TLE] Portugal "
                "[SEP] The official language of Portugal is Portuguese.",
                ["Portuguese"],
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: The composer of the opera Carmen was born in which city? context: [PAR] [TLE] "
            "Carmen [SEP] Carmen is an opera in four acts by the French composer Georges Bizet. [PAR] [TLE] "
            "Georges Bizet [SEP] Georges Bizet was a French composer born in Paris in 1838.",
            "targets": ["Paris"],
        },
        {
            "split": "train",
            "row": 3,
            "source": "question: What river flows through the city where the Charles Bridge is located? context: "
            "[PAR] [TLE] Charles Bridge [SEP] The Charles Bridge is a medieval stone bridge in Prague. [PAR] [TLE] "
            "Prague [SEP] Prague is the capital of the Czech Republic and is situated on the Vltava river.",
            "targets": ["Vltava"],
        },
    ],
}

FIXTURES["searchqa"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _mrqa(
                "SearchQA",
                "In 1969 this astronaut became the first person to walk on the moon",
                "[DOC] [TLE] Neil Armstrong - Biography [PAR] Neil Armstrong was an American astronaut and the "
                "first person to walk on the Moon in 1969. [DOC] [TLE] Apollo 11 - NASA [PAR] Apollo 11 landed on "
                "the Moon on July 20, 1969.",
                ["Neil Armstrong"],
            ),
            _mrqa(
                "SearchQA",
                "This Italian city is famous for its canals and gondolas",
                "[DOC] [TLE] Venice travel guide [PAR] Venice is built on more than 100 small islands in a lagoon "
                "and is famous for its canals and gondolas.",
                ["Venice"],
            ),
            _mrqa(
                "TriviaQA-web",
                "Which planet is known as the Red Planet?",
                "Mars is the fourth planet from the Sun and is often called the Red Planet because of its reddish "
                "appearance.",
                ["Mars"],
            ),
            _mrqa(
                "SearchQA",
                "The chemical symbol for this precious metal is Au",
                "[DOC] [TLE] Gold - Element information [PAR] Gold is a chemical element with the symbol Au and "
                "atomic number 79. [DOC] [TLE] Periodic table [PAR] Au comes from the Latin word aurum.",
                ["Gold"],
            ),
            _mrqa(
                "SearchQA",
                'This Shakespeare tragedy features the line "To be, or not to be"',
                '[DOC] [TLE] Hamlet - Wikipedia [PAR] "To be, or not to be" is the opening phrase of a soliloquy '
                "in Hamlet, a tragedy by William Shakespeare.",
                ["Hamlet"],
            ),
            _mrqa(
                "NewsQA",
                "Who won the election?",
                "(CNN) -- Maria Lopez won the mayoral election in Riverside on Tuesday, taking 54 percent of the vote.",
                ["Maria Lopez"],
            ),
            _mrqa(
                "SearchQA",
                "This largest ocean on Earth covers about one third of the planet's surface",
                "[DOC] [TLE] Pacific Ocean facts [PAR] The Pacific Ocean is the largest and deepest ocean, "
                "covering about one third of Earth's surface.",
                ["Pacific Ocean"],
            ),
            _mrqa(
                "SearchQA",
                "This inventor of the phonograph also developed a practical light bulb",
                "[DOC] [TLE] Thomas Edison - Inventions [PAR] Thomas Edison invented the phonograph in 1877 and "
                "developed a practical incandescent light bulb.",
                ["Thomas Edison"],
            ),
        ],
        "validation": [
            _mrqa(
                "SearchQA",
                "This country's flag features a red maple leaf",
                "[DOC] [TLE] Flag of Canada [PAR] The national flag of Canada features a red maple leaf on a white "
                "square. [DOC] [TLE] Canada - Country profile [PAR] Canada is the second-largest country in the "
                "world by area.",
                ["Canada", "canada"],
            ),
            _mrqa(
                "SearchQA",
                'This author of "1984" also wrote "Animal Farm"',
                "[DOC] [TLE] George Orwell - Books [PAR] George Orwell wrote Animal Farm in 1945 and Nineteen "
                "Eighty-Four in 1949.",
                ["George Orwell", "Orwell"],
            ),
            _mrqa(
                "HotpotQA",
                "Which city is the capital of the country where the Vasa Museum is located?",
                "[PAR] [TLE] Vasa Museum [SEP] The Vasa Museum is a maritime museum in Sweden. [PAR] [TLE] Sweden "
                "[SEP] Stockholm is the capital of Sweden.",
                ["Stockholm"],
            ),
            _mrqa(
                "SearchQA",
                "This gas makes up about 78 percent of Earth's atmosphere",
                "[DOC] [TLE] Composition of air [PAR] Nitrogen makes up about 78 percent of the air, and oxygen "
                "about 21 percent.",
                ["Nitrogen"],
            ),
            _mrqa(
                "SearchQA",
                "This Dutch painter cut off part of his own ear in 1888",
                "[DOC] [TLE] Vincent van Gogh - Life [PAR] In December 1888 Vincent van Gogh cut off part of his "
                "left ear.",
                ["Vincent van Gogh", "van Gogh"],
            ),
            _mrqa(
                "SQuAD",
                "How many students attend the university?",
                "The university enrolls about 24,000 students across nine faculties.",
                ["about 24,000"],
            ),
            _mrqa(
                "SearchQA",
                "This bird has been the national symbol of the United States since 1782",
                "[DOC] [TLE] Bald eagle - National symbol [PAR] The bald eagle has been the national bird of the "
                "United States since 1782.",
                ["bald eagle"],
            ),
            _mrqa(
                "SearchQA",
                "The Great Pyramid of Giza was built for this pharaoh",
                "[DOC] [TLE] Great Pyramid of Giza [PAR] The Great Pyramid was built as a tomb for the pharaoh "
                "Khufu around 2560 BC.",
                ["Khufu"],
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: In 1969 this astronaut became the first person to walk on the moon context: "
            "[DOC] [TLE] Neil Armstrong - Biography [PAR] Neil Armstrong was an American astronaut and the first "
            "person to walk on the Moon in 1969. [DOC] [TLE] Apollo 11 - NASA [PAR] Apollo 11 landed on the Moon "
            "on July 20, 1969.",
            "targets": ["Neil Armstrong"],
        },
        {
            "split": "train",
            "row": 3,
            "source": "question: The chemical symbol for this precious metal is Au context: [DOC] [TLE] Gold - "
            "Element information [PAR] Gold is a chemical element with the symbol Au and atomic number 79. [DOC] "
            "[TLE] Periodic table [PAR] Au comes from the Latin word aurum.",
            "targets": ["Gold"],
        },
    ],
}

FIXTURES["newsqa"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _mrqa(
                "NewsQA",
                "What did the city council approve?",
                "(CNN) -- The city council in Portland approved a plan on Wednesday to add 40 miles of bike lanes "
                "over the next five years. The vote was 7 to 2.",
                ["40 miles of bike lanes"],
            ),
            _mrqa(
                "NewsQA",
                "How many people were rescued?",
                "ATHENS, Greece (CNN) -- Coast guard crews rescued 23 people after a fishing boat capsized near the "
                "island of Crete on Sunday, officials said.",
                ["23"],
            ),
            _mrqa(
                "SQuAD",
                "Who founded the company?",
                "The company was founded in 1921 by Elena Marsh, a former schoolteacher from Ohio.",
                ["Elena Marsh"],
            ),
            _mrqa(
                "NewsQA",
                "Where was the concert held?",
                "(CNN) -- More than 50,000 fans attended the benefit concert at Wembley Stadium in London on "
                "Saturday night.",
                ["Wembley Stadium"],
            ),
            _mrqa(
                "SearchQA",
                "This river is the longest in Africa",
                "[DOC] [TLE] Nile River facts [PAR] The Nile is the longest river in Africa, flowing north into the "
                "Mediterranean Sea.",
                ["Nile"],
            ),
            _mrqa(
                "NewsQA",
                "What did the company recall?",
                "(CNN) -- The toy maker recalled 200,000 plastic building sets on Thursday because small parts could "
                "break off.",
                ["200,000 plastic building sets"],
            ),
            _mrqa(
                "NewsQA",
                "Who was named the new coach?",
                "(CNN) -- The national team named former defender Luis Ortega as its new head coach on Monday.",
                ["Luis Ortega"],
            ),
            _mrqa(
                "NewsQA",
                "When will the museum reopen?",
                "(CNN) -- The city museum, closed since a fire in 2019, will reopen to the public in June, its "
                "director said.",
                ["in June"],
            ),
        ],
        "validation": [
            _mrqa(
                "NewsQA",
                "What caused the delays?",
                "(CNN) -- Heavy snow caused delays at airports across northern Europe on Friday, with hundreds of "
                "flights cancelled.",
                ["Heavy snow", "snow"],
            ),
            _mrqa(
                "NewsQA",
                "How old was the climber?",
                "KATHMANDU, Nepal (CNN) -- A 73-year-old climber from Japan reached the summit of Mount Everest on "
                "Thursday, becoming one of the oldest people to do so.",
                ["73"],
            ),
            _mrqa(
                "TriviaQA-web",
                "In which country is the city of Timbuktu?",
                "Timbuktu is an ancient city in Mali, situated north of the Niger River.",
                ["Mali"],
            ),
            _mrqa(
                "NewsQA",
                "Who was arrested?",
                "(CNN) -- Police arrested a 35-year-old man in connection with the bank robbery in Dayton, "
                "authorities said Tuesday.",
                ["a 35-year-old man"],
            ),
            _mrqa(
                "NewsQA",
                "What did scientists discover?",
                "(CNN) -- Scientists discovered a new species of frog in the rainforests of Ecuador, according to a "
                "study published Monday.",
                ["a new species of frog", "new species of frog"],
            ),
            _mrqa(
                "HotpotQA",
                "Which college did the inventor of the World Wide Web attend?",
                "[PAR] [TLE] World Wide Web [SEP] The World Wide Web was invented by Tim Berners-Lee in 1989. "
                "[PAR] [TLE] Tim Berners-Lee [SEP] Tim Berners-Lee studied physics at The Queen's College, Oxford.",
                ["The Queen's College, Oxford"],
            ),
            _mrqa(
                "NewsQA",
                "How much money was raised?",
                "(CNN) -- A charity run in Boston raised $1.2 million for cancer research on Sunday.",
                ["$1.2 million"],
            ),
            _mrqa(
                "NewsQA",
                "Which team won the championship?",
                "(CNN) -- The Chicago Fire won the championship on Sunday after beating Seattle 2-1 in the final.",
                ["The Chicago Fire", "Chicago Fire"],
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "question: What did the city council approve? context: (CNN) -- The city council in Portland "
            "approved a plan on Wednesday to add 40 miles of bike lanes over the next five years. The vote was 7 "
            "to 2.",
            "targets": ["40 miles of bike lanes"],
        },
        {
            "split": "train",
            "row": 3,
            "source": "question: Where was the concert held? context: (CNN) -- More than 50,000 fans attended the "
            "benefit concert at Wembley Stadium in London on Saturday night.",
            "targets": ["Wembley Stadium"],
        },
    ],
}

# ---------------------------------------------------------------------------------------------------------
# Other tasks

FIXTURES["winogrande"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "sentence": "Sarah lent her umbrella to Emily because _ was going to walk home in the rain.",
                "option1": "Sarah",
                "option2": "Emily",
                "answer": "2",
            },
            {
                "sentence": "Ben's plant grew faster than Carl's plant because _ kept it on a sunny windowsill.",
                "option1": "Ben",
                "option2": "Carl",
                "answer": "1",
            },
            {
                "sentence": "The bottle did not fit into the bag because the _ was too small.",
                "option1": "bottle",
                "option2": "bag",
                "answer": "2",
            },
            {
                "sentence": "Megan asked Rachel for advice about cooking because _ had worked as a chef for years.",
                "option1": "Megan",
                "option2": "Rachel",
                "answer": "2",
            },
            {
                "sentence": "The ice melted faster on the metal tray than on the wooden board because the _ conducts "
                "heat well.",
                "option1": "metal tray",
                "option2": "wooden board",
                "answer": "1",
            },
            {
                "sentence": "Kevin was better at chess than Brian, so _ usually won their games.",
                "option1": "Kevin",
                "option2": "Brian",
                "answer": "1",
            },
        ],
        "validation": [
            {
                "sentence": "The vase broke when it fell on the tile floor because the _ was fragile.",
                "option1": "vase",
                "option2": "floor",
                "answer": "1",
            },
            {
                "sentence": "Jessica helped Natalie move apartments, so _ bought her dinner as a thank-you.",
                "option1": "Jessica",
                "option2": "Natalie",
                "answer": "2",
            },
            {
                "sentence": "The soup was too hot for the child, so _ waited for it to cool down.",
                "option1": "the soup",
                "option2": "the child",
                "answer": "2",
            },
            {
                "sentence": "Derek ran the marathon faster than Paul because _ had trained all year.",
                "option1": "Derek",
                "option2": "Paul",
                "answer": "1",
            },
            {
                "sentence": "The blanket kept me warmer than the jacket because the _ was thicker.",
                "option1": "blanket",
                "option2": "jacket",
                "answer": "1",
            },
            {
                "sentence": "Amy wanted to borrow a pen from Linda, but _ had forgotten her pencil case at home.",
                "option1": "Amy",
                "option2": "Linda",
                "answer": "2",
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence: Sarah lent her umbrella to Emily because _ was going to walk home in the rain. "
            "option0: Sarah option1: Emily",
            "targets": ["1"],
        },
    ],
}

FIXTURES["yelp"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "text": "The pasta was cold and the waiter ignored us for twenty minutes. Never coming back.",
                "label": 0,
            },
            {
                "text": "Best tacos in town! The salsa bar is amazing and the staff are super friendly.",
                "label": 1,
            },
            {
                "text": "Booked a room for three nights and the air conditioning never worked. The front desk did "
                "nothing.",
                "label": 0,
            },
            {
                "text": "Great little coffee shop with fast wifi and friendly baristas.\\nI come here every week to "
                "work.",
                "label": 1,
            },
            {
                "text": "Overpriced and underwhelming. The steak was tough and the sides were bland.",
                "label": 0,
            },
            {
                "text": "Dr. Patel and her team were kind, patient and explained everything clearly. Highly recommend.",
                "label": 1,
            },
        ],
        "test": [
            {
                "text": "Waited an hour for a table and the food was mediocre at best.",
                "label": 0,
            },
            {
                "text": "Fantastic service and the best pizza I've had outside of Naples.",
                "label": 1,
            },
            {
                "text": "The mechanic charged me for parts he never replaced. Avoid this place.",
                "label": 0,
            },
            {
                "text": "Clean rooms, comfy beds and a great breakfast buffet. Would stay again.",
                "label": 1,
            },
            {
                "text": "Rude staff and a dirty bathroom. I won't be returning.",
                "label": 0,
            },
            {
                "text": "Our wedding cake was beautiful and delicious. Thank you so much!",
                "label": 1,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence: The pasta was cold and the waiter ignored us for twenty minutes. Never coming back.",
            "targets": ["0"],
        },
    ],
}

FIXTURES["scitail"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            _scitail(
                "Photosynthesis takes place in the chloroplasts of plant cells.",
                "( Photosynthesis ( ( takes ( place ( in ( ( the chloroplasts ) ( of ( plant cells ) ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NN Photosynthesis)) (VP (VBZ takes) (NP (NN place)) (PP (IN in) (NP (NP (DT the) "
                "(NNS chloroplasts)) (PP (IN of) (NP (NN plant) (NNS cells)))))) (. .)))",
                "Photosynthesis occurs in the chloroplasts.",
                "(ROOT (S (NP (NN Photosynthesis)) (VP (VBZ occurs) (PP (IN in) (NP (DT the) (NNS chloroplasts)))) "
                "(. .)))",
                "entailment",
            ),
            _scitail(
                "Earthquakes are measured with a seismometer.",
                "( Earthquakes ( ( are ( measured ( with ( a seismometer ) ) ) ) . ) )",
                "(ROOT (S (NP (NNS Earthquakes)) (VP (VBP are) (VP (VBN measured) (PP (IN with) (NP (DT a) "
                "(NN seismometer))))) (. .)))",
                "Volcanoes form at the boundaries of tectonic plates.",
                "(ROOT (S (NP (NNS Volcanoes)) (VP (VBP form) (PP (IN at) (NP (NP (DT the) (NNS boundaries)) "
                "(PP (IN of) (NP (JJ tectonic) (NNS plates)))))) (. .)))",
                "neutral",
            ),
            _scitail(
                "Water boils at 100 degrees Celsius at sea level.",
                "( Water ( ( boils ( ( at ( 100 ( degrees Celsius ) ) ) ( at ( sea level ) ) ) ) . ) )",
                "(ROOT (S (NP (NN Water)) (VP (VBZ boils) (PP (IN at) (NP (CD 100) (NNS degrees) (NNP Celsius))) "
                "(PP (IN at) (NP (NN sea) (NN level)))) (. .)))",
                "The boiling point of water at sea level is 100 degrees Celsius.",
                "(ROOT (S (NP (NP (DT The) (VBG boiling) (NN point)) (PP (IN of) (NP (NN water))) (PP (IN at) "
                "(NP (NN sea) (NN level)))) (VP (VBZ is) (NP (CD 100) (NNS degrees) (NNP Celsius))) (. .)))",
                "entailment",
            ),
            _scitail(
                "The moon orbits the Earth about once every 27 days.",
                "( ( The moon ) ( ( orbits ( ( the Earth ) ( about ( once ( every ( 27 days ) ) ) ) ) ) . ) )",
                "(ROOT (S (NP (DT The) (NN moon)) (VP (VBZ orbits) (NP (DT the) (NNP Earth)) (ADVP (RB about) "
                "(RB once)) (NP (DT every) (CD 27) (NNS days))) (. .)))",
                "The moon has no atmosphere.",
                "(ROOT (S (NP (DT The) (NN moon)) (VP (VBZ has) (NP (DT no) (NN atmosphere))) (. .)))",
                "neutral",
            ),
            _scitail(
                "Mammals are warm-blooded animals that feed their young with milk.",
                "( Mammals ( ( are ( ( warm-blooded animals ) ( that ( feed ( ( their young ) ( with milk ) ) ) ) ) "
                ") . ) )",
                "(ROOT (S (NP (NNS Mammals)) (VP (VBP are) (NP (NP (JJ warm-blooded) (NNS animals)) (SBAR (WHNP "
                "(WDT that)) (S (VP (VBP feed) (NP (PRP$ their) (JJ young)) (PP (IN with) (NP (NN milk)))))))) "
                "(. .)))",
                "Mammals feed their young with milk.",
                "(ROOT (S (NP (NNS Mammals)) (VP (VBP feed) (NP (PRP$ their) (JJ young)) (PP (IN with) (NP "
                "(NN milk)))) (. .)))",
                "entailment",
            ),
            _scitail(
                "Copper is a good conductor of electricity.",
                "( Copper ( ( is ( ( a ( good conductor ) ) ( of electricity ) ) ) . ) )",
                "(ROOT (S (NP (NN Copper)) (VP (VBZ is) (NP (NP (DT a) (JJ good) (NN conductor)) (PP (IN of) "
                "(NP (NN electricity))))) (. .)))",
                "Rubber is used to insulate electrical wires.",
                "(ROOT (S (NP (NN Rubber)) (VP (VBZ is) (VP (VBN used) (S (VP (TO to) (VP (VB insulate) (NP "
                "(JJ electrical) (NNS wires))))))) (. .)))",
                "neutral",
            ),
        ],
        "validation": [
            _scitail(
                "Plants release oxygen as a product of photosynthesis.",
                "( Plants ( ( release ( oxygen ( as ( ( a product ) ( of photosynthesis ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NNS Plants)) (VP (VBP release) (NP (NN oxygen)) (PP (IN as) (NP (NP (DT a) "
                "(NN product)) (PP (IN of) (NP (NN photosynthesis)))))) (. .)))",
                "Plants produce oxygen during photosynthesis.",
                "(ROOT (S (NP (NNS Plants)) (VP (VBP produce) (NP (NN oxygen)) (PP (IN during) (NP "
                "(NN photosynthesis)))) (. .)))",
                "entailment",
            ),
            _scitail(
                "Sound travels faster in water than in air.",
                "( Sound ( ( travels ( faster ( ( in water ) ( than ( in air ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NN Sound)) (VP (VBZ travels) (ADVP (RBR faster) (PP (IN in) (NP (NN water))) "
                "(PP (IN than) (PP (IN in) (NP (NN air)))))) (. .)))",
                "Light travels at about 300,000 kilometers per second.",
                "(ROOT (S (NP (NN Light)) (VP (VBZ travels) (PP (IN at) (NP (QP (RB about) (CD 300,000)) "
                "(NNS kilometers))) (PP (IN per) (NP (NN second)))) (. .)))",
                "neutral",
            ),
            _scitail(
                "The heart pumps blood through the body.",
                "( ( The heart ) ( ( pumps ( blood ( through ( the body ) ) ) ) . ) )",
                "(ROOT (S (NP (DT The) (NN heart)) (VP (VBZ pumps) (NP (NN blood)) (PP (IN through) (NP (DT the) "
                "(NN body)))) (. .)))",
                "Blood is pumped through the body by the heart.",
                "(ROOT (S (NP (NN Blood)) (VP (VBZ is) (VP (VBN pumped) (PP (IN through) (NP (DT the) (NN body))) "
                "(PP (IN by) (NP (DT the) (NN heart))))) (. .)))",
                "entailment",
            ),
            _scitail(
                "Granite is an igneous rock formed from cooled magma.",
                "( Granite ( ( is ( ( an ( igneous rock ) ) ( formed ( from ( cooled magma ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NNP Granite)) (VP (VBZ is) (NP (NP (DT an) (JJ igneous) (NN rock)) (VP (VBN formed) "
                "(PP (IN from) (NP (JJ cooled) (NN magma)))))) (. .)))",
                "Sandstone is a sedimentary rock.",
                "(ROOT (S (NP (NN Sandstone)) (VP (VBZ is) (NP (DT a) (JJ sedimentary) (NN rock))) (. .)))",
                "neutral",
            ),
            _scitail(
                "Ice floats because it is less dense than liquid water.",
                "( Ice ( ( floats ( because ( it ( is ( less ( dense ( than ( liquid water ) ) ) ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NN Ice)) (VP (VBZ floats) (SBAR (IN because) (S (NP (PRP it)) (VP (VBZ is) "
                "(ADJP (RBR less) (JJ dense) (PP (IN than) (NP (JJ liquid) (NN water)))))))) (. .)))",
                "Ice is less dense than liquid water.",
                "(ROOT (S (NP (NN Ice)) (VP (VBZ is) (ADJP (RBR less) (JJ dense) (PP (IN than) (NP (JJ liquid) "
                "(NN water))))) (. .)))",
                "entailment",
            ),
            _scitail(
                "Bees collect nectar from flowers to make honey.",
                "( Bees ( ( collect ( nectar ( ( from flowers ) ( to ( make honey ) ) ) ) ) . ) )",
                "(ROOT (S (NP (NNS Bees)) (VP (VBP collect) (NP (NN nectar)) (PP (IN from) (NP (NNS flowers))) "
                "(S (VP (TO to) (VP (VB make) (NP (NN honey)))))) (. .)))",
                "Butterflies taste with their feet.",
                "(ROOT (S (NP (NNS Butterflies)) (VP (VBP taste) (PP (IN with) (NP (PRP$ their) (NNS feet)))) (. .)))",
                "neutral",
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "premise: Photosynthesis takes place in the chloroplasts of plant cells. "
            "hypothesis: Photosynthesis occurs in the chloroplasts.",
            "targets": ["0"],
        },
        {
            "split": "train",
            "row": 1,
            "source": "premise: Earthquakes are measured with a seismometer. "
            "hypothesis: Volcanoes form at the boundaries of tectonic plates.",
            "targets": ["1"],
        },
    ],
}

FIXTURES["paws"] = {
    "fmt": "jsonl",
    "files": {
        "train": [
            {
                "id": 1,
                "sentence1": "The river rises in the hills north of the town and flows south into the lake .",
                "sentence2": "The river rises in the hills south of the town and flows north into the lake .",
                "label": 0,
            },
            {
                "id": 2,
                "sentence1": "In 1998 , she moved to Chicago , where she worked as a journalist .",
                "sentence2": "She moved to Chicago in 1998 , where she worked as a journalist .",
                "label": 1,
            },
            {
                "id": 3,
                "sentence1": "The album was recorded in London and produced by Mark Ellis .",
                "sentence2": "The album was produced in London and recorded by Mark Ellis .",
                "label": 0,
            },
            {
                "id": 4,
                "sentence1": "He was born in Lyon and later studied law in Paris .",
                "sentence2": "He was born in Lyon , and later he studied law in Paris .",
                "label": 1,
            },
            {
                "id": 5,
                "sentence1": "The station is served by trains from Bristol to Cardiff .",
                "sentence2": "The station is served by trains from Cardiff to Bristol .",
                "label": 0,
            },
            {
                "id": 6,
                "sentence1": "The team finished second in the league in 2004 and won the cup in 2005 .",
                "sentence2": "In 2004 , the team finished second in the league and won the cup in 2005 .",
                "label": 1,
            },
        ],
        "validation": [
            {
                "id": 1,
                "sentence1": "The church was built in 1850 and rebuilt after a fire in 1902 .",
                "sentence2": "Built in 1850 , the church was rebuilt after a fire in 1902 .",
                "label": 1,
            },
            {
                "id": 2,
                "sentence1": "Smith defeated Jones in the final to win the title .",
                "sentence2": "Jones defeated Smith in the final to win the title .",
                "label": 0,
            },
            {
                "id": 3,
                "sentence1": "The village is located east of Krakow , near the border with Slovakia .",
                "sentence2": "Located east of Krakow , the village is near the border with Slovakia .",
                "label": 1,
            },
            {
                "id": 4,
                "sentence1": "She was the first wife of the painter and later married a banker .",
                "sentence2": "She was the first wife of the banker and later married a painter .",
                "label": 0,
            },
            {
                "id": 5,
                "sentence1": "The road connects the town with the coast to the west .",
                "sentence2": "To the west , the road connects the town with the coast .",
                "label": 1,
            },
            {
                "id": 6,
                "sentence1": "The species is found in Brazil and was first described in Peru .",
                "sentence2": "The species is found in Peru and was first described in Brazil .",
                "label": 0,
            },
        ],
        "test": [
            {
                "id": 1,
                "sentence1": "The film was directed by Anna Berg and written by Karl Holm .",
                "sentence2": "The film was written by Anna Berg and directed by Karl Holm .",
                "label": 0,
            },
            {
                "id": 2,
                "sentence1": "In 2010 , the company moved its headquarters to Dublin .",
                "sentence2": "The company moved its headquarters to Dublin in 2010 .",
                "label": 1,
            },
            {
                "id": 3,
                "sentence1": "The lake lies north of the mountains and south of the forest .",
                "sentence2": "The lake lies south of the mountains and north of the forest .",
                "label": 0,
            },
            {
                "id": 4,
                "sentence1": "He played for the club from 1990 to 1995 before retiring .",
                "sentence2": "From 1990 to 1995 he played for the club , before he retired .",
                "label": 1,
            },
            {
                "id": 5,
                "sentence1": "The bridge crosses the river between Ashford and Kingsley .",
                "sentence2": "Between Ashford and Kingsley , the bridge crosses the river .",
                "label": 1,
            },
            {
                "id": 6,
                "sentence1": "Maria taught music at the school where her brother studied .",
                "sentence2": "Maria studied music at the school where her brother taught .",
                "label": 0,
            },
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "sentence1: The river rises in the hills north of the town and flows south into the lake . "
            "sentence2: The river rises in the hills south of the town and flows north into the lake .",
            "targets": ["0"],
        },
    ],
}

FIXTURES["mbpp"] = {
    "fmt": "parquet",
    "files": {
        "train": [
            _mbpp(
                601,
                "Write a function to count the number of vowels in a given string.",
                "def count_vowels(s):\r\n  count = 0\r\n  for ch in s:\r\n    if ch.lower() in 'aeiou':\r\n"
                "      count += 1\r\n  return count",
                [
                    "assert count_vowels('python') == 1",
                    "assert count_vowels('Education') == 5",
                    "assert count_vowels('rhythm') == 0",
                ],
            ),
            _mbpp(
                602,
                "Write a python function to check whether the given number is a perfect square or not.",
                "import math\r\ndef is_perfect_square(n):\r\n  if n < 0:\r\n    return False\r\n"
                "  root = math.isqrt(n)\r\n  return root * root == n",
                [
                    "assert is_perfect_square(16) == True",
                    "assert is_perfect_square(14) == False",
                    "assert is_perfect_square(0) == True",
                ],
            ),
            _mbpp(
                603,
                "Write a function to reverse the order of words in a given sentence.",
                "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
                [
                    'assert reverse_words("python program") == "program python"',
                    'assert reverse_words("java language is fun") == "fun is language java"',
                    'assert reverse_words("hello") == "hello"',
                ],
            ),
            _mbpp(
                604,
                "Write a function to find the second largest distinct number in a list.",
                "def second_largest(nums):\r\n  return sorted(set(nums))[-2]",
                [
                    "assert second_largest([1, 2, 3, 4]) == 3",
                    "assert second_largest([10, 10, 9]) == 9",
                    "assert second_largest([5, 1, 5, 2]) == 2",
                ],
            ),
            _mbpp(
                605,
                "Write a function to merge two dictionaries into a single dictionary.",
                "def merge_dictionaries(d1, d2):\r\n  result = dict(d1)\r\n  result.update(d2)\r\n  return result",
                [
                    "assert merge_dictionaries({'a': 1}, {'b': 2}) == {'a': 1, 'b': 2}",
                    "assert merge_dictionaries({'a': 1, 'b': 2}, {'b': 3}) == {'a': 1, 'b': 3}",
                    "assert merge_dictionaries({}, {'x': 0}) == {'x': 0}",
                ],
            ),
            _mbpp(
                606,
                "Write a function to compute the sum of the digits of a non-negative integer.",
                "def sum_digits(n):\r\n  return sum(int(d) for d in str(n))",
                [
                    "assert sum_digits(345) == 12",
                    "assert sum_digits(0) == 0",
                    "assert sum_digits(1001) == 2",
                ],
                ["assert sum_digits(987654321) == 45"],
            ),
        ],
        "validation": [
            _mbpp(
                511,
                "Write a python function to find the sum of the even numbers in a list.",
                "def sum_even(nums):\r\n  return sum(x for x in nums if x % 2 == 0)",
                [
                    "assert sum_even([1, 2, 3, 4]) == 6",
                    "assert sum_even([1, 3, 5]) == 0",
                    "assert sum_even([10, -2, 7]) == 8",
                ],
            ),
            _mbpp(
                512,
                "Write a function to remove duplicates from a list while keeping the original order.",
                "def remove_duplicates(items):\r\n  seen = set()\r\n  result = []\r\n  for item in items:\r\n"
                "    if item not in seen:\r\n      seen.add(item)\r\n      result.append(item)\r\n  return result",
                [
                    "assert remove_duplicates([1, 2, 1, 3, 2]) == [1, 2, 3]",
                    "assert remove_duplicates(['a', 'a', 'b']) == ['a', 'b']",
                    "assert remove_duplicates([]) == []",
                ],
            ),
            _mbpp(
                513,
                "Write a function to check whether the given string is a palindrome or not.",
                "def is_palindrome(s):\r\n  return s == s[::-1]",
                [
                    'assert is_palindrome("radar") == True',
                    'assert is_palindrome("python") == False',
                    'assert is_palindrome("abba") == True',
                ],
            ),
            _mbpp(
                514,
                "Write a function to find the factorial of a given number.",
                "def factorial(n):\r\n  if n <= 1:\r\n    return 1\r\n  return n * factorial(n - 1)",
                [
                    "assert factorial(5) == 120",
                    "assert factorial(0) == 1",
                    "assert factorial(3) == 6",
                ],
            ),
            _mbpp(
                515,
                "Write a function to count the occurrences of a character in a string.",
                "def count_char(s, c):\n    return s.count(c)",
                [
                    'assert count_char("banana", "a") == 3',
                    'assert count_char("hello", "z") == 0',
                    'assert count_char("mississippi", "s") == 4',
                ],
            ),
            _mbpp(
                516,
                "Write a function to convert a list of digits into a single integer.",
                "def digits_to_int(digits):\r\n  return int(''.join(map(str, digits)))",
                [
                    "assert digits_to_int([1, 2, 3]) == 123",
                    "assert digits_to_int([4, 0, 5]) == 405",
                    "assert digits_to_int([7]) == 7",
                ],
            ),
        ],
        "test": [
            _mbpp(
                11,
                "Write a function to find the tuple with the smallest second element in a list of tuples.",
                "def min_by_second(pairs):\r\n  return min(pairs, key=lambda p: p[1])",
                [
                    "assert min_by_second([(1, 5), (2, 3), (3, 8)]) == (2, 3)",
                    "assert min_by_second([('a', 2), ('b', 1)]) == ('b', 1)",
                    "assert min_by_second([(0, 0)]) == (0, 0)",
                ],
            ),
            _mbpp(
                12,
                "Write a function to find the area of a rectangle.",
                "def rectangle_area(length, width):\r\n  area = length * width\r\n  return area",
                [
                    "assert rectangle_area(10, 20) == 200",
                    "assert rectangle_area(4, 2) == 8",
                    "assert rectangle_area(0, 7) == 0",
                ],
            ),
            _mbpp(
                13,
                "Write a function to find the common elements of two lists in sorted order.",
                "def common_elements(a, b):\r\n  return sorted(set(a) & set(b))",
                [
                    "assert common_elements([1, 2, 3], [2, 3, 4]) == [2, 3]",
                    "assert common_elements([5, 6], [7, 8]) == []",
                    "assert common_elements([3, 1, 2], [2, 1]) == [1, 2]",
                ],
            ),
            _mbpp(
                14,
                "Write a python function to check whether the given number is even or not.",
                "def is_even(n):\r\n  return n % 2 == 0",
                [
                    "assert is_even(4) == True",
                    "assert is_even(7) == False",
                    "assert is_even(0) == True",
                ],
            ),
            _mbpp(
                15,
                "Write a function to capitalize the first letter of every word in a string.",
                "def capitalize_words(s):\n    return ' '.join(w[0].upper() + w[1:] for w in s.split())",
                [
                    'assert capitalize_words("hello world") == "Hello World"',
                    'assert capitalize_words("python is fun") == "Python Is Fun"',
                    'assert capitalize_words("a") == "A"',
                ],
            ),
            _mbpp(
                16,
                "Write a function to find the n-th fibonacci number.",
                "def fibonacci(n):\r\n  a, b = 0, 1\r\n  for _ in range(n):\r\n    a, b = b, a + b\r\n  return a",
                [
                    "assert fibonacci(7) == 13",
                    "assert fibonacci(1) == 1",
                    "assert fibonacci(10) == 55",
                ],
            ),
        ],
    },
    "expected": [
        {
            "split": "train",
            "row": 0,
            "source": "Write a function to count the number of vowels in a given string. Your code should pass these "
            "tests:\nassert count_vowels('python') == 1\nassert count_vowels('Education') == 5\n"
            "assert count_vowels('rhythm') == 0",
            "targets": [
                "def count_vowels(s):\n  count = 0\n  for ch in s:\n    if ch.lower() in 'aeiou':\n      count += 1\n"
                "  return count"
            ],
        },
    ],
}

# ---------------------------------------------------------------------------------------------------------
# Rows the loader must reject (or, for a hidden test label, refuse to train or score on).

BAD_ROWS: dict[str, dict] = {
    "rte_label_out_of_set": {
        "sentence1": "The festival attracted more than 10,000 visitors over the weekend.",
        "sentence2": "The festival was well attended.",
        "label": 5,
        "idx": 6,
    },
    "rte_missing_column": {
        "sentence1": "The ship left the harbor at dawn with forty passengers on board.",
        "label": 0,
        "idx": 7,
    },
    "glue_hidden_test_label": {
        "sentence1": "The new stadium will seat about 60,000 fans when it opens in 2027.",
        "sentence2": "The stadium will open in 2027.",
        "label": -1,
        "idx": 0,
    },
}
