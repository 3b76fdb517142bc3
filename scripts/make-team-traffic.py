#!/usr/bin/env python3
"""Writes tests/fixtures/team_tickets.jsonl: one team's simulated support-ticket traffic.

Why it exists: `switchyard router train --from-db` claims a team's router adapts to the team's
own traffic. To show it in a test we need traffic with a property the default router cannot
know from the public benchmarks it was trained on, and ground truth to measure the result.
Here: a ticket classifier (billing, bug, account, shipping) where the weak model fails on
tickets about EU tax and payment-rail jargon (reverse charge, SEPA mandates, chargebacks, ...)
and does well elsewhere, while the strong model is right almost everywhere. Both kinds of
ticket are built from templates of the same length range, so prompt length says nothing.

The rows follow the routing data format the simulator replays (`choices`, `reference`,
per-model `score` and token counts). Everything is a pure function of the row number, so the
file is reproducible:

    python3 scripts/make-team-traffic.py > tests/fixtures/team_tickets.jsonl
"""

import hashlib
import json
import sys

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
LABELS = ["billing", "bug", "account", "shipping"]
ROWS = 600

CUSTOMERS = ["Acme GmbH", "Nordlicht BV", "Borealis SARL", "Kestrel Ltd", "Tamarind SpA",
             "Fjord AS", "Quokka Pty", "Lindqvist AB", "Orchard Inc", "Marlowe & Co"]
PRODUCTS = ["the analytics plan", "our team workspace", "the mobile app", "the API tier",
            "the reporting add-on", "the starter bundle", "the annual licence"]

# (label, template): plain tickets the weak model handles.
PLAIN = [
    ("billing", "Hi, {c} was charged twice for {p} this month. Can you refund the extra payment?"),
    ("billing", "Our invoice for {p} shows the wrong amount, please send a corrected invoice to {c}."),
    ("bug", "Since the last update {p} crashes when I open the settings page. Steps: log in, click settings."),
    ("bug", "The export button in {p} does nothing for {c}; the console shows an error about a missing file."),
    ("account", "Please reset the password for the admin of {c}, she is locked out of {p}."),
    ("account", "How do I add two more users from {c} to {p}? The invite link seems to expire."),
    ("shipping", "The hardware key for {p} ordered by {c} has not arrived, the tracking page shows no update."),
    ("shipping", "{c} received a damaged parcel with the devices for {p}; can you send a replacement?"),
]

# (label, template): tax and payment-rail jargon the weak model gets wrong.
JARGON = [
    ("billing", "{c} needs the reverse charge applied under Article 196 of the VAT directive on invoices for {p}."),
    ("billing", "Our SEPA direct debit mandate for {p} was rejected with reason code MD01; {c} needs it re-signed."),
    ("billing", "{c} got a chargeback notice for {p}: the issuer cites reason 10.4 and wants compelling evidence."),
    ("billing", "Intra-community supply to {c}: the VIES check failed, so the zero-rated VAT on {p} is questioned."),
    ("account", "{c} wants the OSS registration number on its profile so the VAT on {p} is reported in one return."),
    ("account", "For {p}, {c} must switch the mandate reference after the creditor identifier changed under SEPA rules."),
    ("bug", "The withholding tax line for {c} is computed on the gross amount of {p} instead of the net after the reverse charge."),
    ("shipping", "Customs held the devices for {p}: {c} is listed as importer of record but the EORI number and incoterm DAP do not match."),
]


# Neutral sentences appended until a ticket reaches a length drawn for it, so that length
# is independent of the kind of ticket.
FILLERS = ["Thanks in advance.", "This is blocking our month-end close.", "Kind regards, the ops desk.",
           "We are on the EU data centre.", "Please reply to the whole thread.",
           "Our account manager is in copy.", "It started on Monday.", "Urgent, please."]


def unit(*parts):
    """A stable uniform draw in [0, 1) from the parts."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return int(h[:12], 16) / float(1 << 48)


def pick(seq, *parts):
    return seq[int(unit(*parts) * len(seq))]


def main():
    out = sys.stdout
    for i in range(ROWS):
        jargon = unit("jargon", i) < 0.3
        label, template = pick(JARGON if jargon else PLAIN, "template", i)
        text = template.format(c=pick(CUSTOMERS, "customer", i), p=pick(PRODUCTS, "product", i))
        target = 130 + int(unit("length", i) * 120)
        k = 0
        while len(text) < target:
            text += " " + pick(FILLERS, "filler", i, k)
            k += 1
        text += f" (ticket #{10000 + i})"
        weak_right = unit("weak", i) < (0.2 if jargon else 0.93)
        strong_right = unit("strong", i) < (0.95 if jargon else 0.96)
        tokens = (len(text) + 3) // 4
        row = {
            "id": f"ticket-{i}",
            "task": "support/tickets",
            "prompt": text,
            "choices": LABELS,
            "reference": label,
            "source": "synthetic: scripts/make-team-traffic.py",
            "tokens_estimated": True,
            "models": {
                WEAK: {"score": 1.0 if weak_right else 0.0, "prompt_tokens": tokens,
                       "completion_tokens": 1},
                STRONG: {"score": 1.0 if strong_right else 0.0, "prompt_tokens": tokens,
                         "completion_tokens": 1},
            },
        }
        out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
