"""Regenerate requests.jsonl: 120 varied chat prompts in OpenAI Batch format (deterministic)."""

import json
from pathlib import Path

CAPITALS = [
    "France",
    "Japan",
    "Italy",
    "Germany",
    "Spain",
    "Canada",
    "Egypt",
    "Kenya",
    "Brazil",
    "Australia",
    "Norway",
    "Portugal",
    "Greece",
    "Mexico",
    "India",
]
DEFINE = [
    "photosynthesis",
    "gravity",
    "a prime number",
    "democracy",
    "an atom",
    "inflation",
    "a volcano",
    "machine learning",
    "a noun",
    "the water cycle",
    "an ecosystem",
    "a metaphor",
    "electricity",
    "a galaxy",
    "evolution",
]
WRITE = [
    "a haiku about autumn leaves",
    "a two-line poem about the sea",
    "a short thank-you note to a teacher",
    "a one-sentence story about a dragon",
    "a tweet announcing a bake sale",
    "a slogan for a bicycle shop",
    "a limerick about a cat",
    "a motivational quote for Monday morning",
    "a product description for a blue coffee mug",
    "a riddle about time",
]
HOWTO = [
    "boil an egg",
    "plant a tomato seed",
    "tie a shoelace",
    "make a cup of tea",
    "stay focused while studying",
    "save money on groceries",
    "start running as a beginner",
    "write a good email subject line",
    "keep a houseplant alive",
    "learn a new language",
]
MATH = [
    ("What is 12 plus 30?", 4),
    ("What is 9 times 7?", 4),
    ("What is 100 divided by 4?", 4),
    ("Is 17 a prime number?", 8),
    ("What is half of 50?", 4),
    ("What is 15 minus 6?", 4),
    ("How many sides does a hexagon have?", 4),
    ("What is 3 squared?", 4),
    ("How many minutes are in two hours?", 4),
    ("What is 2 to the power of 5?", 4),
]
CODE = [
    "reverse a string in Python",
    "read a file line by line in Python",
    "sort a list of numbers in Python",
    "check if a number is even in Python",
    "print the numbers 1 to 10 in Python",
    "define a function in JavaScript",
    "create a dictionary in Python",
    "join a list of words into a sentence in Python",
    "count the words in a sentence in Python",
    "get the current date in Python",
]
SHORT = [
    "Hi!",
    "Who are you?",
    "Tell me a fun fact.",
    "What day comes after Monday?",
    "Name a colour of the rainbow.",
    "What do bees make?",
    "What is the opposite of hot?",
    "How many legs does a spider have?",
    "What is the largest ocean?",
    "What language is spoken in Brazil?",
]
SUPPORT_SYSTEM = (
    "You are a concise customer-support assistant for Acme Cloud. Answer in at most two sentences."
)
SUPPORT = [
    "How do I reset my password?",
    "Can I change my billing date?",
    "Why was my card declined?",
    "How do I add a team member?",
    "Where can I download my invoices?",
    "How do I delete my account?",
    "Is there a student discount?",
    "How do I enable two-factor authentication?",
    "What regions do you support?",
    "How do I contact a human?",
]


def main() -> None:
    requests = []

    def add(messages, **sampling):
        body = {"model": "smollm2-135m-instruct", "messages": messages, **sampling}
        requests.append(
            {
                "custom_id": f"request-{len(requests) + 1:03d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
        )

    for c in CAPITALS:
        add([{"role": "user", "content": f"What is the capital of {c}?"}], max_tokens=24)
    for d in DEFINE:
        add([{"role": "user", "content": f"Explain {d} in one simple sentence."}], max_tokens=64)
    for w in WRITE:
        add(
            [{"role": "user", "content": f"Write {w}."}],
            max_tokens=64,
            temperature=0.7,
            top_p=0.9,
            seed=len(requests),
        )
    for h in HOWTO:
        add([{"role": "user", "content": f"Give three short steps to {h}."}], max_tokens=96)
    for q, _ in MATH:
        add([{"role": "user", "content": q}], max_tokens=24)
    for c in CODE:
        add([{"role": "user", "content": f"Show how to {c}."}], max_tokens=96)
    for s in SHORT:
        add([{"role": "user", "content": s}], max_tokens=32)
    for s in SUPPORT:
        add(
            [{"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": s}],
            max_tokens=64,
        )
    for c in CAPITALS[:10]:
        add(
            [
                {"role": "user", "content": f"Name one famous landmark in {c}."},
            ],
            max_tokens=32,
            stop=["\n\n"],
        )
    for i, d in enumerate(DEFINE[:10]):
        add(
            [
                {"role": "user", "content": f"What is {d}?"},
                {"role": "assistant", "content": f"{d.capitalize()} is a concept I can explain."},
                {"role": "user", "content": "Great, now give me an everyday example."},
            ],
            max_tokens=64,
            temperature=0.8,
            seed=1000 + i,
        )
    for c in CAPITALS[10:]:
        add(
            [
                {
                    "role": "user",
                    "content": f"Translate 'good morning' into the main language of {c}.",
                }
            ],
            max_tokens=24,
        )
    out = Path(__file__).with_name("requests.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in requests))
    print(f"wrote {len(requests)} requests to {out}")


if __name__ == "__main__":
    main()
