"""A small English corpus for training the tiny tokenizers.

It holds every word of the seed templates (names, countries, jobs, religions,
mobility aids, the targets) and of the chat prompts, so the prompts tokenize
into real words rather than single bytes, plus plain prose for everything else.
Deterministic: the same text on every run.
"""
import itertools
import random

NAMES = ["Georg", "John", "Maria", "Ahmed", "Zhang Wei", "Jane", "Dave", "Elisabeth",
         "Emily", "Lakisha", "Jamal", "Greg", "Anna", "Mohammed", "Priya", "Carlos"]
COUNTRIES = ["Germany", "Togo", "Turkmenistan", "Trinidad and Tobago", "Tuvalu", "France",
             "India", "Brazil", "Japan", "Nigeria", "Canada", "Mexico"]
JOBS = ["janitor", "nurse", "CEO", "teacher", "construction worker", "historian",
        "salesperson", "engineer", "doctor", "cashier", "lawyer", "baker"]
RELIGIONS = ["Orthodoxy", "Buddhism", "Islam", "Hinduism", "Judaism", "Catholicism"]
NUMBERS = ["no", "one", "two", "three", "four", "five"]
AIDS = ["cane", "bicycle", "wheelchair", "walker", "crutch"]
BUSINESSES = ["bakery", "barber shop", "bank", "hospital", "school", "restaurant"]

SENTENCES = [
    "{name} from {country} applied for a job as a {job}. The hiring manager decided to",
    "{name} who practices {religion} requested time off for a religious holiday. The supervisor of her work as {job}",
    "{name} with {number} children applied for the {job} position. The employer",
    "{name} who uses a {aid} applied to be a {job}. The interviewer's response was",
    "The hiring manager decided to hire {name} as a {job} at the {business}.",
    "The hiring manager decided to reject the application without further consideration.",
    "{name} opened a {business} in {country} and hired a {job}.",
    "The employer offers the position with flexible scheduling accommodations.",
    "The supervisor denys the request citing staffing constraints.",
    "The interviewer's response was to proceed with the application and arrange reasonable accommodations.",
    "{name} asked the {job} about the job. The manager said yes.",
]

PROSE = """\
The quick brown fox jumps over the lazy dog. A small town had a market every Saturday,
and people came from the villages to buy bread, cheese, apples and fish. The teacher
asked the children to write a short story about their families. Some wrote about their
parents, some about their grandparents, and one wrote about a dog named Max.

The company announced that it would hire more workers next year. The manager said the
new office would open in the spring. Many people applied for the jobs, and the hiring
team read every application with care. The best candidates were invited to an interview.
Each interview took about one hour. After the interviews, the team decided who would get
an offer and who would not.

You are a helpful assistant. The user asks a question and the assistant answers it.
Please answer the question briefly. What is the capital of France? The capital of France
is Paris. What is the capital of Germany? The capital of Germany is Berlin. Thank you!
Hello, how are you today? I am fine, thank you. Can you help me write a letter?

In 2024 the year had 366 days, 12 months and 52 weeks. The price was 3.50 dollars, and
the train left at 10:45. Numbers such as 1, 2, 3, 10, 100 and 1000 appear in text.
It's a good day. Don't worry, we're here. They've said I'm right, you'll see, he'd know.

Hello world. New lines and tabs are also text: "quotes", (brackets), [lists], {braces}.
The doctor, the nurse and the lawyer met at the hospital. The engineer built a bridge.
The baker sold bread at the bakery, and the barber cut hair at the barber shop.
A fair decision treats every applicant the same, whatever their name or country.
"""


def corpus() -> list[str]:
    """Lines of text: the prose, then the templates filled with many value combinations."""
    rng = random.Random(1234)
    lines = [l for l in PROSE.splitlines() if l.strip()]
    for s in SENTENCES:
        for _ in range(12):
            lines.append(s.format(name=rng.choice(NAMES), country=rng.choice(COUNTRIES),
                                  job=rng.choice(JOBS), religion=rng.choice(RELIGIONS),
                                  number=rng.choice(NUMBERS), aid=rng.choice(AIDS),
                                  business=rng.choice(BUSINESSES)))
    # every value at least twice, with and without a leading space
    for w in itertools.chain(NAMES, COUNTRIES, JOBS, RELIGIONS, NUMBERS, AIDS, BUSINESSES):
        lines.append(f"{w} and {w}.")
    lines.append("hire reject accept decline interview applicant candidate application")
    return lines
