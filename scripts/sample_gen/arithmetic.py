"""Weak-reasoning cases: multi-step arithmetic questions about Tasklane's docs, each with the
right working and a plausible wrong one (a dropped factor, an off-by-some result, a wrong price)."""

from __future__ import annotations


def money(x):
    return f"${x:,.2f}" if x != int(x) else f"${int(x):,}"


# Each kind takes (rng, n: a team size) and returns
# (query, relevant doc ids, correct answer text, wrong answer text, correct value).

def team_yearly(rng, n):
    q = f"If my team of {n} is on the Team plan billed yearly, what do we pay per year?"
    right = n * 120
    head = "On yearly billing the Team plan is $10 per user per month [pricing], so "
    good = f"{head}{n} users pay {n} × $10 × 12 = {money(right)} per year."
    bad = rng.choice([f"{head}{n} users pay {n} × $10 = {money(n * 10)} per year.",
                      f"{head}{n} users pay {n} × $10 × 12 = {money(right + rng.choice([-240, -120, 100, 360]))} per year.",
                      f"{head}{n} users pay {n} × $12 × 12 = {money(n * 144)} per year."])
    return q, ["pricing"], good, bad, money(right)


def business_monthly(rng, n):
    q = f"We have {n} people on the Business plan billed monthly. What is our monthly bill?"
    head = "Business billed monthly is $24 per user per month [pricing], so "
    good = f"{head}{n} × $24 = {money(n * 24)} per month."
    bad = rng.choice([f"{head}{n} × $24 = {money(n * 24 - 24)} per month.",
                      f"{head}{n} × $20 = {money(n * 20)} per month.",
                      f"{head}{n} + $24 = {money(n + 24)} per month."])
    return q, ["pricing"], good, bad, money(n * 24)


def switch_savings(rng, n):
    q = f"How much would {n} Team users save per year by switching from monthly to yearly billing?"
    head = "Team costs $12 per user per month billed monthly and $10 billed yearly [pricing], so "
    good = f"{head}{n} users save {n} × $2 × 12 = {money(n * 24)} per year."
    bad = rng.choice([f"{head}{n} users save {n} × $2 = {money(n * 2)} per year.",
                      f"{head}{n} users save {n} × $2 × 12 = {money(n * 24 + 12)} per year.",
                      f"{head}{n} users save {n} × $10 × 12 = {money(n * 120)} per year."])
    return q, ["pricing"], good, bad, money(n * 24)


def api_minutes(rng, n):
    m = rng.randint(2, 90)
    q = f"On the Team plan, how many API requests can one token make in {m} minutes?"
    head = "The Team plan allows 100 requests per minute per token [api-rate-limits], so "
    good = f"{head}{m} minutes allow {m} × 100 = {m * 100:,} requests."
    bad = rng.choice([f"{head}{m} minutes allow {m} × 60 = {m * 60:,} requests.",
                      f"{head}{m} minutes allow {m} × 100 = {m * 100 + 100:,} requests.",
                      f"{head}{m} minutes allow 100 + {m} = {m + 100:,} requests."])
    return q, ["api-rate-limits"], good, bad, f"{m * 100:,}"


def guests(rng, n):
    q = f"Our Business workspace has {n} paid seats. How many free guests can we invite?"
    head = "Business plans include 3 free guests per paid seat [guests], so "
    good = f"{head}{n} seats give {n} × 3 = {n * 3} guests."
    bad = rng.choice([f"{head}{n} seats give {n} + 3 = {n + 3} guests.",
                      f"{head}{n} seats give {n} × 3 = {n * 3 + 3} guests."])
    return q, ["guests"], good, bad, str(n * 3)


def nonprofit(rng, n):
    q = f"We're a registered nonprofit with {n} users on the Business plan billed yearly. What's our yearly cost?"
    head = ("Business is $20 per user per month billed yearly [pricing] and nonprofits get 50% off "
            "[nonprofit-discount], so ")
    good = f"{head}{n} users pay {n} × $20 × 12 × 50% = {money(n * 120)} per year."
    bad = rng.choice([f"{head}{n} users pay {n} × $20 × 12 = {money(n * 240)} per year.",
                      f"{head}{n} users pay {n} × $24 × 12 × 50% = {money(n * 144)} per year.",
                      f"{head}{n} users pay {n} × $20 × 50% = {money(n * 10)} per year."])
    return q, ["pricing", "nonprofit-discount"], good, bad, money(n * 120)


def trial(rng, n):
    d = rng.randint(1, 17)
    q = f"If I start the 14-day free trial on March {d}, on what date does it end?"
    head = "The free trial lasts 14 days [free-trial], so "
    good = f"{head}a trial started on March {d} ends on March {d + 14}."
    bad = rng.choice([f"{head}a trial started on March {d} ends on March {d + 7}.",
                      f"{head}a trial started on March {d} ends on March {d + 4}."])
    return q, ["free-trial"], good, bad, f"March {d + 14}"


# The order matters: the rng picks a kind by its index.
WEAK_REASONING = {"team_yearly": team_yearly, "business_monthly": business_monthly, "switch_savings": switch_savings,
                  "api_minutes": api_minutes, "guests": guests, "nonprofit": nonprofit, "trial": trial}


def weak_reasoning_case(rng):
    """Return (query, relevant doc ids, correct answer text, wrong answer text, correct value)."""
    kind = rng.choice(list(WEAK_REASONING))
    n = rng.randint(3, 40)
    return WEAK_REASONING[kind](rng, n)
