#!/usr/bin/env python3
"""Generate the synthetic sample data shipped with refit in ``datasets/samples/``.

refit turns the failure logs of a RAG support assistant into fine-tuning data.
To develop and test that pipeline without real customer data, this script
writes a small, fully synthetic world around a fictional SaaS product,
"Tasklane" (a project-management / team task tracker), whose support
assistant answers questions from a knowledge base:

* ``kb.jsonl`` -- the knowledge base: short documents ``{"id", "title",
  "text"}``.  A few are stale variants of current docs (``pricing-2024`` vs
  ``pricing``) and two contain planted (fake) PII.
* ``logs/2026-10-01.jsonl``, ``logs/2026-10-08.jsonl`` and
  ``logs/2026-10-15.jsonl.gz`` -- three weeks of assistant logs, one JSON
  object per line (query, retrieved contexts, response, optional feedback and
  reviewer correction).  They mix correct answers, behaviour failures
  (bad_format, wrong_tone, policy_violation, missing_citation, hallucination,
  weak_reasoning, some of them unlabelled), knowledge failures
  (missing_knowledge, stale_knowledge, wrong_retrieval), multi-turn sessions,
  near-duplicate queries, planted fake PII and secrets, and a sprinkling of
  malformed lines (broken JSON, wrong types, invalid UTF-8, a BOM, an empty
  line, an oversized line) so every pipeline stage has something to do.
* ``general.jsonl`` -- general instruction-following items (arithmetic, unit
  conversion, rewriting, one-word answers, ...) used as a replay set against
  catastrophic forgetting.
* ``README.md`` -- what the files hold, with the counts printed below.

The assistant's ideal answer is a compact JSON object,
``{"answer": "... [doc-id].", "citations": ["doc-id"]}``, or exactly
``{"answer": "I don't know based on the provided documents.", "citations": []}``
when the contexts lack the answer.

Everything is derived from ``random.Random`` streams seeded from ``--seed``,
and gzip output uses ``mtime=0``, so two runs with the same seed write
byte-identical files.  Only the standard library is used.

Usage::

    python scripts/gen_sample.py [--seed 7] [--out datasets/samples]
"""
from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import random
import re
import string
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

MODEL = "tasklane-assistant-v3"
IDK = "I don't know based on the provided documents."
N_RECORDS = 900
LOG_START = datetime(2026, 10, 1, tzinfo=timezone.utc)
WEEK = 7 * 86400
LOG_FILES = ["2026-10-01.jsonl", "2026-10-08.jsonl", "2026-10-15.jsonl.gz"]

# Number of well-formed log records per case (sums to N_RECORDS).
CASE_COUNTS = {
    "positive": 216,                  # 24%
    "no_feedback": 126,               # 14%
    "bad_format": 66,                 # behaviour failures: 33% in total
    "wrong_tone": 54,
    "policy_violation": 48,
    "missing_citation": 63,
    "hallucination": 66,              # wrong fact although the answer is in context
    "hallucination_no_context": 54,   # 6%
    "missing_knowledge": 48,          # knowledge failures: 14% in total
    "stale_knowledge": 36,
    "wrong_retrieval": 42,
    "weak_reasoning": 27,             # 3%
    "multi_label": 54,                # 6%
}

# Label combinations used by the "multi_label" case, with their counts.
MULTI_COMBOS = [
    (("bad_format", "missing_citation"), 16),
    (("wrong_tone", "missing_citation"), 10),
    (("hallucination", "missing_citation"), 8),
    (("policy_violation", "wrong_tone"), 8),
    (("missing_knowledge", "bad_format"), 8),
    (("bad_format", "hallucination"), 4),
]

BEHAVIOUR_CASES = ["bad_format", "wrong_tone", "policy_violation", "missing_citation", "hallucination"]
UNLABELLED_SHARE = 0.25
CORRECTION_SHARE = {
    "bad_format": 0.85, "wrong_tone": 0.85, "policy_violation": 0.85,
    "missing_citation": 0.85, "hallucination": 0.85,
    "hallucination_no_context": 0.5, "missing_knowledge": 0.3,
    "stale_knowledge": 0.4, "wrong_retrieval": 0.35, "weak_reasoning": 0.8,
    "multi_label": 0.85,
}
SESSION_SHARE = 0.35        # share of records that belong to multi-turn sessions
NEAR_DUP_SHARE = 0.12       # share of records whose query re-asks an earlier one
PII_QUERY_SHARE = 0.065     # share of records with PII / a secret in the query
PII_COMMENTS = 10           # failure records whose reviewer comment holds PII
PII_CORRECTIONS = 8         # corrections that deliberately mention the user's email

# ---------------------------------------------------------------------------
# Knowledge base
# ---------------------------------------------------------------------------


def qa(q, gold, *paras, follow=None):
    """A question template, its extractive gold answer and paraphrases."""
    return {"q": q, "gold": gold, "paras": list(paras), "follow": follow}


def doc(doc_id, title, topic, text, *qas, stale_of=None, stale=None, pii=False):
    return {"id": doc_id, "title": title, "topic": topic, "text": text, "qa": list(qas),
            "stale_of": stale_of, "stale": stale or {}, "pii": pii}


KB = [
    # --- billing -----------------------------------------------------------
    doc("pricing", "Pricing plans", "billing",
        "Tasklane has four plans: Free, Team, Business and Enterprise. The Team plan costs $12 per user per "
        "month billed monthly, or $10 per user per month billed yearly. The Business plan costs $24 per user "
        "per month billed monthly, or $20 per user per month billed yearly. Enterprise pricing is custom and "
        "starts at 50 seats.",
        qa("How much does the Team plan cost?",
           "The Team plan costs $12 per user per month billed monthly, or $10 per user per month billed yearly.",
           "whats the price of the team plan", "How much is Tasklane Team per user per month?",
           follow="And on the Team plan?"),
        qa("What does the Business plan cost?",
           "The Business plan costs $24 per user per month billed monthly, or $20 per user per month billed yearly.",
           "business plan price?", "How much do we pay per user for Business?", follow="What about Business?"),
        qa("What is the minimum number of seats for Enterprise?",
           "Enterprise pricing is custom and starts at 50 seats.",
           "min seats for enterprise plan", "How many seats do I need to buy Enterprise?",
           follow="And Enterprise?"),
        qa("What plans does Tasklane offer?", "Tasklane has four plans: Free, Team, Business and Enterprise.",
           "which plans are there?", "What Tasklane plans can I choose from")),
    doc("pricing-2024", "Pricing plans (2024)", "billing",
        "Pricing effective January 2024. The Team plan costs $9 per user per month billed monthly, or $8 per "
        "user per month billed yearly. The Business plan costs $19 per user per month billed monthly, or $16 "
        "per user per month billed yearly. Enterprise pricing is custom and starts at 100 seats.",
        stale_of="pricing",
        stale={0: "The Team plan costs $9 per user per month billed monthly, or $8 per user per month billed yearly.",
               1: "The Business plan costs $19 per user per month billed monthly, or $16 per user per month billed yearly.",
               2: "Enterprise pricing is custom and starts at 100 seats."}),
    doc("free-plan", "Free plan", "billing",
        "The Free plan is free forever for up to 5 members. The Free plan includes up to 3 active projects and "
        "1 GB of file storage per workspace. Automations, guests and timeline view are not available on the "
        "Free plan.",
        qa("How many members can use the Free plan?", "The Free plan is free forever for up to 5 members.",
           "how many people on free plan", "Max users on the Free tier?", follow="How many members on Free?"),
        qa("How much storage does the Free plan include?",
           "The Free plan includes up to 3 active projects and 1 GB of file storage per workspace.",
           "free plan storage limit?", "How many projects and how much storage do I get for free?"),
        qa("Can I use automations on the Free plan?",
           "Automations, guests and timeline view are not available on the Free plan.",
           "are automations available on free?", "Do free workspaces get automations")),
    doc("free-plan-2024", "Free plan (2024)", "billing",
        "Free plan details effective January 2024. The Free plan is free forever for up to 10 members. The Free "
        "plan includes unlimited projects and 500 MB of file storage per workspace.",
        stale_of="free-plan",
        stale={0: "The Free plan is free forever for up to 10 members.",
               1: "The Free plan includes unlimited projects and 500 MB of file storage per workspace."}),
    doc("free-trial", "Free trial", "billing",
        "Every new workspace gets a 14-day free trial of the Business plan. No credit card is required to start "
        "the trial. When the trial ends, the workspace moves to the Free plan unless a payment method is added.",
        qa("How long is the free trial?", "Every new workspace gets a 14-day free trial of the Business plan.",
           "how long is the trial", "Trial length for Tasklane Business?", follow="How long is the trial?"),
        qa("Do I need a credit card to start the trial?", "No credit card is required to start the trial.",
           "is a credit card required for the trial?", "Do I have to enter my card for the free trial"),
        qa("What happens when my trial ends?",
           "When the trial ends, the workspace moves to the Free plan unless a payment method is added.",
           "what happens after the trial expires", "When the trial is over what happens to my workspace?",
           follow="And when it ends?")),
    doc("annual-billing", "Annual vs monthly billing", "billing",
        "Yearly billing saves about 17% compared to monthly billing. You can switch from monthly to yearly "
        "billing at any time from Settings > Billing, and the unused monthly balance is credited. Switching from "
        "yearly to monthly billing takes effect at the end of the current yearly term.",
        qa("How much do I save with yearly billing?", "Yearly billing saves about 17% compared to monthly billing.",
           "how much cheaper is annual billing", "What's the discount for paying yearly?"),
        qa("Can I switch from monthly to yearly billing?",
           "You can switch from monthly to yearly billing at any time from Settings > Billing, and the unused "
           "monthly balance is credited.",
           "how do I switch to annual billing?", "Can I move my plan from monthly to yearly mid-cycle?"),
        qa("When does switching from yearly to monthly take effect?",
           "Switching from yearly to monthly billing takes effect at the end of the current yearly term.",
           "if I go from annual to monthly when does it apply", "Switching yearly->monthly: when does it kick in?")),
    doc("refund-policy", "Refund policy", "billing",
        "Refunds are available within 30 days of purchase for yearly plans. Monthly plans are not refundable, "
        "but you can cancel at any time to stop the next charge. To request a refund, open Settings > Billing > "
        "Request refund within the 30-day window.",
        qa("Can I get a refund after 30 days?", "Refunds are available within 30 days of purchase for yearly plans.",
           "can i get refund after 30 days", "Is a refund possible more than a month after buying?",
           follow="And after 30 days?"),
        qa("Are monthly plans refundable?",
           "Monthly plans are not refundable, but you can cancel at any time to stop the next charge.",
           "monthly plan refund?", "Do you refund monthly subscriptions", follow="What about monthly plans?"),
        qa("How do I request a refund?",
           "To request a refund, open Settings > Billing > Request refund within the 30-day window.",
           "how to ask for a refund", "Where do I request my money back?")),
    doc("refund-policy-2023", "Refund policy (2023)", "billing",
        "Refund policy effective March 2023. Refunds are available within 14 days of purchase for all plans, "
        "including monthly plans. To request a refund, contact your account manager.",
        stale_of="refund-policy",
        stale={0: "Refunds are available within 14 days of purchase for all plans, including monthly plans.",
               1: "Refunds are available within 14 days of purchase for all plans, including monthly plans.",
               2: "To request a refund, contact your account manager."}),
    doc("cancel-subscription", "Cancelling a subscription", "billing",
        "Workspace owners can cancel from Settings > Billing > Cancel plan. After cancelling, the workspace stays "
        "on the paid plan until the end of the current billing period and then moves to the Free plan. Data over "
        "the Free plan limits is kept read-only for 90 days after a downgrade.",
        qa("How do I cancel my subscription?", "Workspace owners can cancel from Settings > Billing > Cancel plan.",
           "how do i cancel", "Where's the cancel button for my plan?"),
        qa("What happens to my workspace after I cancel?",
           "After cancelling, the workspace stays on the paid plan until the end of the current billing period "
           "and then moves to the Free plan.",
           "after cancel does my workspace still work?", "Do we lose paid features immediately when cancelling?"),
        qa("What happens to data over the Free plan limits after a downgrade?",
           "Data over the Free plan limits is kept read-only for 90 days after a downgrade.",
           "data over free limits after downgrade", "If we downgrade, is extra data deleted?")),
    doc("payment-methods", "Payment methods", "billing",
        "Tasklane accepts Visa, Mastercard, American Express and PayPal. Payment by bank transfer is available "
        "for yearly plans over $3,000. All prices are in US dollars and exclude VAT or sales tax.",
        qa("Which payment methods do you accept?",
           "Tasklane accepts Visa, Mastercard, American Express and PayPal.",
           "what cards do you take", "Can I pay with PayPal or Amex?"),
        qa("Can I pay by bank transfer?", "Payment by bank transfer is available for yearly plans over $3,000.",
           "bank transfer possible?", "Do you accept wire transfers for payment"),
        qa("Do prices include VAT?", "All prices are in US dollars and exclude VAT or sales tax.",
           "are prices incl. VAT", "Is sales tax included in the price?")),
    doc("invoices", "Invoices and receipts", "billing",
        "Invoices are emailed to the billing contact on the day each charge is made. All past invoices can be "
        "downloaded as PDF from Settings > Billing > Invoices. A VAT ID can be added to invoices under Settings > "
        "Billing > Tax details.",
        qa("Where can I download past invoices?",
           "All past invoices can be downloaded as PDF from Settings > Billing > Invoices.",
           "where are my invoices", "How do I get old invoices as PDF?"),
        qa("How do I add our VAT ID to invoices?",
           "A VAT ID can be added to invoices under Settings > Billing > Tax details.",
           "add vat number to invoice", "Where do I put my VAT ID?"),
        qa("When are invoices sent?", "Invoices are emailed to the billing contact on the day each charge is made.",
           "when do invoices get emailed", "When will I receive my invoice?")),
    doc("seats", "Adding and removing seats", "billing",
        "Adding a member to a paid workspace adds a seat, prorated for the rest of the billing period. Removed "
        "seats are credited on the next invoice for monthly plans. On yearly plans, seats can only be reduced at "
        "renewal.",
        qa("Am I charged the full price when I add a member mid-cycle?",
           "Adding a member to a paid workspace adds a seat, prorated for the rest of the billing period.",
           "is adding a member prorated?", "Do new seats get charged for the full month?"),
        qa("Can I reduce seats on a yearly plan?", "On yearly plans, seats can only be reduced at renewal.",
           "remove seats annual plan", "Can we lower our seat count before the yearly renewal?",
           follow="And on a yearly plan?"),
        qa("What happens when I remove a seat on a monthly plan?",
           "Removed seats are credited on the next invoice for monthly plans.",
           "removing seats monthly plan credit?", "Do I get credit for removed seats on monthly billing")),
    doc("nonprofit-discount", "Nonprofit and education discounts", "billing",
        "Registered nonprofits get 50% off the Team and Business plans. Accredited schools and universities get "
        "the Team plan free for classes of up to 50 students. Discount applications are reviewed within 5 "
        "business days.",
        qa("Do you offer a nonprofit discount?", "Registered nonprofits get 50% off the Team and Business plans.",
           "nonprofit discount?", "Is there a discount for charities?"),
        qa("Is Tasklane free for schools?",
           "Accredited schools and universities get the Team plan free for classes of up to 50 students.",
           "education pricing for universities", "Can my class of 30 students use Tasklane for free?"),
        qa("How long does discount approval take?", "Discount applications are reviewed within 5 business days.",
           "how long until my discount is approved", "How many days to review a nonprofit application?")),
    # --- limits ------------------------------------------------------------
    doc("storage-limits", "Storage limits", "limits",
        "Team workspaces get 100 GB of storage. Business workspaces get 1 TB of storage. The maximum size of a "
        "single file upload is 250 MB on all paid plans.",
        qa("How much storage does the Team plan include?", "Team workspaces get 100 GB of storage.",
           "team plan storage", "How many GB do Team workspaces get?", follow="And on the Team plan?"),
        qa("How much storage do Business workspaces get?", "Business workspaces get 1 TB of storage.",
           "business storage limit", "Storage on Business plan?", follow="What about Business?"),
        qa("What is the maximum file upload size?",
           "The maximum size of a single file upload is 250 MB on all paid plans.",
           "max file size upload", "How big can an attachment be?")),
    doc("storage-limits-2024", "Storage limits (2024)", "limits",
        "Storage limits effective January 2024. Team workspaces get 20 GB of storage. Business workspaces get "
        "250 GB of storage. The maximum size of a single file upload is 100 MB on all paid plans.",
        stale_of="storage-limits",
        stale={0: "Team workspaces get 20 GB of storage.", 1: "Business workspaces get 250 GB of storage.",
               2: "The maximum size of a single file upload is 100 MB on all paid plans."}),
    doc("workspace-limits", "Workspace limits", "limits",
        "A workspace can have up to 10,000 projects and 500,000 tasks. Each task can have up to 100 subtasks. "
        "Business plans allow 50 custom fields per project and Team plans allow 10.",
        qa("How many projects can a workspace have?",
           "A workspace can have up to 10,000 projects and 500,000 tasks.",
           "project limit", "Max tasks per workspace?"),
        qa("How many subtasks can a task have?", "Each task can have up to 100 subtasks.",
           "subtask limit", "max subtasks per task??"),
        qa("How many custom fields can I add per project?",
           "Business plans allow 50 custom fields per project and Team plans allow 10.",
           "custom fields limit", "How many custom fields on Team?")),
    # --- api ---------------------------------------------------------------
    doc("api-rate-limits", "API rate limits", "api",
        "The REST API allows 100 requests per minute per token on the Team plan and 500 requests per minute per "
        "token on Business and Enterprise. Requests over the limit receive HTTP 429 with a Retry-After header. "
        "Rate limit counters reset every 60 seconds.",
        qa("What is the API rate limit?",
           "The REST API allows 100 requests per minute per token on the Team plan and 500 requests per minute "
           "per token on Business and Enterprise.",
           "api rate limit?", "How many API requests per minute can I make?"),
        qa("What happens when I exceed the API rate limit?",
           "Requests over the limit receive HTTP 429 with a Retry-After header.",
           "what error do i get over the rate limit", "Exceeded rate limit - what response code?"),
        qa("How often do rate limits reset?", "Rate limit counters reset every 60 seconds.",
           "when does the rate limit reset", "How long until my API quota resets?")),
    doc("api-rate-limits-v1", "API rate limits (v1 API)", "api",
        "Rate limits for the legacy v1 API. The API allows 60 requests per minute per token on all plans. "
        "Requests over the limit receive HTTP 503. Rate limit counters reset every 5 minutes.",
        stale_of="api-rate-limits",
        stale={0: "The API allows 60 requests per minute per token on all plans.",
               1: "Requests over the limit receive HTTP 503.",
               2: "Rate limit counters reset every 5 minutes."}),
    doc("api-tokens", "API tokens", "api",
        "Personal API tokens are created under Profile > Developer > API tokens. Tokens inherit the permissions "
        "of the user who created them and expire after 365 days. Workspace admins can revoke any token from "
        "Admin > Security.",
        qa("How do I create an API token?",
           "Personal API tokens are created under Profile > Developer > API tokens.",
           "create api token", "Where do I generate a personal access token?"),
        qa("Do API tokens expire?",
           "Tokens inherit the permissions of the user who created them and expire after 365 days.",
           "api token expiry", "How long is an API token valid?"),
        qa("Can an admin revoke someone's API token?",
           "Workspace admins can revoke any token from Admin > Security.",
           "revoke token as admin", "How can admins kill a leaked API token?")),
    doc("webhooks", "Webhooks", "api",
        "Webhooks send a POST request to your URL when tasks are created, updated, completed or deleted. Each "
        "request is signed with an HMAC-SHA256 signature in the X-Tasklane-Signature header. Failed deliveries "
        "are retried 5 times with exponential backoff over 24 hours.",
        qa("Which events trigger webhooks?",
           "Webhooks send a POST request to your URL when tasks are created, updated, completed or deleted.",
           "webhook events list", "When does Tasklane fire a webhook?"),
        qa("How are webhook requests signed?",
           "Each request is signed with an HMAC-SHA256 signature in the X-Tasklane-Signature header.",
           "webhook signature header", "How do I verify a webhook came from Tasklane?"),
        qa("Are failed webhook deliveries retried?",
           "Failed deliveries are retried 5 times with exponential backoff over 24 hours.",
           "webhook retries?", "What if my endpoint is down when a webhook is sent")),
    # --- security ----------------------------------------------------------
    doc("sso", "Single sign-on (SSO)", "security",
        "SAML single sign-on is available on the Business and Enterprise plans. Tasklane supports Okta, Microsoft "
        "Entra ID, Google Workspace and OneLogin as identity providers. Admins can enforce SSO for all members "
        "from Admin > Security > SSO.",
        qa("Which plans include SSO?", "SAML single sign-on is available on the Business and Enterprise plans.",
           "is sso on team plan", "Do I need Business for SAML SSO?"),
        qa("Which identity providers are supported for SSO?",
           "Tasklane supports Okta, Microsoft Entra ID, Google Workspace and OneLogin as identity providers.",
           "does sso work with okta", "Supported IdPs for SAML?"),
        qa("Can I force everyone to log in with SSO?",
           "Admins can enforce SSO for all members from Admin > Security > SSO.",
           "enforce sso for all users", "How do I make SSO mandatory?")),
    doc("scim", "SCIM user provisioning", "security",
        "SCIM 2.0 provisioning is available on the Enterprise plan only. SCIM lets your identity provider create, "
        "update and deactivate Tasklane members automatically. Deprovisioned members lose access within 5 minutes.",
        qa("Is SCIM available on the Business plan?", "SCIM 2.0 provisioning is available on the Enterprise plan only.",
           "scim on business?", "Which plan do I need for SCIM provisioning"),
        qa("How quickly do deprovisioned users lose access?", "Deprovisioned members lose access within 5 minutes.",
           "how fast does deprovisioning remove access", "After we deprovision someone, when are they locked out?"),
        qa("What does SCIM provisioning do?",
           "SCIM lets your identity provider create, update and deactivate Tasklane members automatically.",
           "what is scim for", "What can SCIM automate in Tasklane?")),
    doc("two-factor", "Two-factor authentication", "security",
        "Members can turn on two-factor authentication with an authenticator app under Profile > Security. Admins "
        "on Team plans and above can require 2FA for everyone in the workspace. SMS codes are not supported for 2FA.",
        qa("How do I enable 2FA?",
           "Members can turn on two-factor authentication with an authenticator app under Profile > Security.",
           "turn on two factor", "Where do I set up two-factor authentication?"),
        qa("Can admins require 2FA for all members?",
           "Admins on Team plans and above can require 2FA for everyone in the workspace.",
           "force 2fa for workspace", "Can I make 2FA mandatory for my team?"),
        qa("Does Tasklane support SMS codes for 2FA?", "SMS codes are not supported for 2FA.",
           "sms 2fa?", "Can I get 2FA codes via text message")),
    doc("data-security", "Security and compliance", "security",
        "Tasklane is SOC 2 Type II certified and renews the audit every year. All data is encrypted at rest with "
        "AES-256 and in transit with TLS 1.2 or higher. Customer data is hosted on AWS in the US (Virginia) or the "
        "EU (Frankfurt).",
        qa("Is Tasklane SOC 2 certified?", "Tasklane is SOC 2 Type II certified and renews the audit every year.",
           "soc2?", "Do you have a SOC 2 Type II report"),
        qa("How is data encrypted?",
           "All data is encrypted at rest with AES-256 and in transit with TLS 1.2 or higher.",
           "encryption at rest?", "What encryption does Tasklane use"),
        qa("Where is customer data hosted?",
           "Customer data is hosted on AWS in the US (Virginia) or the EU (Frankfurt).",
           "where are your servers", "Which cloud and region hosts our data?")),
    doc("data-residency", "Data residency", "security",
        "Enterprise customers can choose EU data residency when the workspace is created. Existing Enterprise "
        "workspaces can be migrated to the EU region by support with 7 days' notice. Data residency cannot be "
        "changed on Team or Business plans.",
        qa("Can I keep my data in the EU?",
           "Enterprise customers can choose EU data residency when the workspace is created.",
           "eu data residency", "Is EU hosting available for our workspace?"),
        qa("Can an existing workspace be moved to the EU region?",
           "Existing Enterprise workspaces can be migrated to the EU region by support with 7 days' notice.",
           "migrate workspace to eu", "How much notice to move our data to the EU?"),
        qa("Can Business customers change data residency?",
           "Data residency cannot be changed on Team or Business plans.",
           "data residency on business plan", "Can we pick the region on Team?")),
    doc("audit-log", "Audit log", "security",
        "Enterprise workspaces have an audit log of sign-ins, permission changes and exports. Audit log entries "
        "are kept for 1 year and can be streamed to Splunk or Datadog. Admins can filter the audit log by user, "
        "event type and date.",
        qa("Is there an audit log?",
           "Enterprise workspaces have an audit log of sign-ins, permission changes and exports.",
           "audit log?", "Can I see who signed in and when?"),
        qa("How long are audit log entries kept?",
           "Audit log entries are kept for 1 year and can be streamed to Splunk or Datadog.",
           "audit log retention", "Can I stream audit logs to Splunk?")),
    doc("ip-allowlist", "IP allowlisting", "security",
        "Enterprise admins can restrict sign-ins to approved IP ranges from Admin > Security > IP allowlist. Up "
        "to 100 CIDR ranges can be added to the allowlist. Members signing in from outside the allowed ranges see "
        "an access denied page.",
        qa("Can I restrict logins to our office IP?",
           "Enterprise admins can restrict sign-ins to approved IP ranges from Admin > Security > IP allowlist.",
           "ip allowlist", "Can we whitelist IP addresses?"),
        qa("How many IP ranges can I allowlist?", "Up to 100 CIDR ranges can be added to the allowlist.",
           "ip allowlist limit", "max CIDR ranges?")),
    doc("account-recovery", "Account recovery", "security",
        "If you lose your 2FA device, sign in with one of the 10 backup codes generated at setup. Without backup "
        "codes, support verifies ownership with a callback to the phone number on the account before resetting "
        "2FA. Example from ticket #48213: ownership of marco.rossi@example.org was confirmed by callback to "
        "+39 02 1234 5678.",
        qa("I lost my phone with 2FA, how do I log in?",
           "If you lose your 2FA device, sign in with one of the 10 backup codes generated at setup.",
           "lost 2fa device", "Can't access my authenticator app, how do I sign in?"),
        qa("What if I don't have backup codes?",
           "Without backup codes, support verifies ownership with a callback to the phone number on the account "
           "before resetting 2FA.",
           "no backup codes 2fa", "Lost 2FA and no backup codes - what now?"),
        pii=True),
    # --- data --------------------------------------------------------------
    doc("data-export", "Exporting your data", "data",
        "Admins can export the whole workspace as JSON or CSV from Admin > Export. Exports include tasks, "
        "comments, projects and attachment links and are ready within 24 hours. Export download links expire "
        "after 7 days.",
        qa("How do I export all my data?",
           "Admins can export the whole workspace as JSON or CSV from Admin > Export.",
           "export workspace data", "Can I get a full export of our workspace?"),
        qa("How long does an export take?",
           "Exports include tasks, comments, projects and attachment links and are ready within 24 hours.",
           "how long for export to be ready", "Export ready time?"),
        qa("How long are export download links valid?", "Export download links expire after 7 days.",
           "export link expiry", "When does my export download link expire")),
    doc("data-deletion", "Deleting your workspace", "data",
        "Workspace owners can delete a workspace from Admin > Danger zone. Deleted workspaces can be restored for "
        "30 days, after which all data is permanently erased within 60 days. Backups are purged on a 35-day "
        "rotation.",
        qa("How do I delete my workspace?", "Workspace owners can delete a workspace from Admin > Danger zone.",
           "delete workspace", "Where is the option to delete our account?"),
        qa("Can I restore a deleted workspace?",
           "Deleted workspaces can be restored for 30 days, after which all data is permanently erased within 60 days.",
           "undo workspace deletion", "Is there a way to recover a deleted workspace?"),
        qa("How long are backups kept?", "Backups are purged on a 35-day rotation.",
           "backup retention", "How long do you keep backups after deletion?")),
    doc("gdpr", "GDPR and DPA", "data",
        "Tasklane acts as a data processor for customer content under GDPR. A signed Data Processing Addendum can "
        "be downloaded from the Trust Center. Customers are notified at least 30 days before a new subprocessor "
        "is added.",
        qa("Do you offer a DPA?", "A signed Data Processing Addendum can be downloaded from the Trust Center.",
           "dpa download", "Where can I get the data processing addendum?"),
        qa("Is Tasklane a data controller or processor?",
           "Tasklane acts as a data processor for customer content under GDPR.",
           "controller or processor gdpr", "Under GDPR what role does Tasklane have?"),
        qa("How much notice do you give before adding a subprocessor?",
           "Customers are notified at least 30 days before a new subprocessor is added.",
           "subprocessor notice period", "Will we be told before new subprocessors are added?")),
    # --- shortcuts ---------------------------------------------------------
    doc("keyboard-shortcuts", "Keyboard shortcuts", "shortcuts",
        "Press Q to quick-add a task from anywhere. Press Ctrl+K (Cmd+K on Mac) to open the command palette. "
        "Press ? to see the full list of keyboard shortcuts.",
        qa("What's the shortcut to add a task quickly?", "Press Q to quick-add a task from anywhere.",
           "shortcut quick add task", "Which key creates a new task?"),
        qa("How do I open the command palette?", "Press Ctrl+K (Cmd+K on Mac) to open the command palette.",
           "command palette shortcut", "what's ctrl k do"),
        qa("How can I see all keyboard shortcuts?", "Press ? to see the full list of keyboard shortcuts.",
           "list of shortcuts", "Where do I find every hotkey?")),
    doc("more-shortcuts", "More keyboard shortcuts", "shortcuts",
        "Press Tab then M to assign the selected task to yourself. Press Ctrl+Enter (Cmd+Enter on Mac) to mark "
        "the selected task complete. Press G then I to jump to your Inbox.",
        qa("Is there a shortcut to assign a task to myself?",
           "Press Tab then M to assign the selected task to yourself.",
           "assign to me shortcut", "hotkey to assign myself"),
        qa("What's the shortcut to complete a task?",
           "Press Ctrl+Enter (Cmd+Enter on Mac) to mark the selected task complete.",
           "mark complete shortcut", "How do I close a task with the keyboard?"),
        qa("How do I jump to my Inbox with the keyboard?", "Press G then I to jump to your Inbox.",
           "inbox shortcut", "key to go to inbox")),
    # --- integrations ------------------------------------------------------
    doc("integrations", "Integrations overview", "integrations",
        "Tasklane has native integrations with Slack, Microsoft Teams, GitHub, GitLab, Google Drive, Dropbox and "
        "Zoom. Integrations are enabled by an admin from Admin > Integrations. Zapier and Make connectors cover "
        "more than 5,000 other apps.",
        qa("Which integrations does Tasklane have?",
           "Tasklane has native integrations with Slack, Microsoft Teams, GitHub, GitLab, Google Drive, Dropbox and Zoom.",
           "what integrations are there", "Does Tasklane work with Slack and GitHub?"),
        qa("Who can turn on integrations?", "Integrations are enabled by an admin from Admin > Integrations.",
           "who enables integrations", "Can members enable integrations themselves?"),
        qa("How do I connect apps that aren't natively supported?",
           "Zapier and Make connectors cover more than 5,000 other apps.",
           "apps without native integration", "Can I use Zapier with Tasklane?")),
    doc("slack-integration", "Slack integration", "integrations",
        "The Slack app posts task updates to any channel you choose. Typing /tasklane new in Slack creates a task "
        "in your default project. Slack notifications can be muted per project from Project settings > "
        "Notifications.",
        qa("How do I create a task from Slack?",
           "Typing /tasklane new in Slack creates a task in your default project.",
           "create task from slack", "What's the slack command for a new task?"),
        qa("Can I mute Slack notifications for one project?",
           "Slack notifications can be muted per project from Project settings > Notifications.",
           "mute slack notifs project", "Turn off Slack updates for a single project?")),
    doc("github-integration", "GitHub integration", "integrations",
        "Mentioning a task ID such as TL-123 in a pull request title links the pull request to the task. When the "
        "linked pull request is merged, the task moves to Done automatically. The GitHub integration is available "
        "on the Team plan and above.",
        qa("How do I link a pull request to a task?",
           "Mentioning a task ID such as TL-123 in a pull request title links the pull request to the task.",
           "link PR to task", "How to connect a GitHub PR with a Tasklane task"),
        qa("What happens when a linked PR is merged?",
           "When the linked pull request is merged, the task moves to Done automatically.",
           "pr merged task status", "Does merging a PR close the task?"),
        qa("Is the GitHub integration on the Free plan?",
           "The GitHub integration is available on the Team plan and above.",
           "github integration free plan", "Which plans have the GitHub integration")),
    doc("calendar-sync", "Calendar sync", "integrations",
        "Tasks with due dates sync one-way to Google Calendar and Outlook. Changes in Tasklane appear in your "
        "calendar within 15 minutes. Editing an event in the calendar does not change the task.",
        qa("Can I sync tasks to Google Calendar?", "Tasks with due dates sync one-way to Google Calendar and Outlook.",
           "google calendar sync", "Does Tasklane sync with Outlook calendar?"),
        qa("How fast do changes show up in my calendar?",
           "Changes in Tasklane appear in your calendar within 15 minutes.",
           "calendar sync delay", "How long until a due date change appears in Outlook?"),
        qa("If I edit the calendar event, does the task change?",
           "Editing an event in the calendar does not change the task.",
           "two way calendar sync?", "Does editing in Google Calendar update Tasklane")),
    # --- apps --------------------------------------------------------------
    doc("mobile-apps", "Mobile apps", "apps",
        "Tasklane mobile apps are available for iOS 16 or later and Android 10 or later. The mobile apps support "
        "offline mode and sync changes when you reconnect. Push notifications can be configured per project in "
        "the app settings.",
        qa("Which iOS version does the app need?",
           "Tasklane mobile apps are available for iOS 16 or later and Android 10 or later.",
           "minimum ios version", "Does the app work on Android 9?"),
        qa("Do the mobile apps work offline?",
           "The mobile apps support offline mode and sync changes when you reconnect.",
           "offline mode mobile", "Can I use Tasklane on my phone without internet?"),
        qa("Can I configure push notifications per project?",
           "Push notifications can be configured per project in the app settings.",
           "push notifications per project", "How do I change push notifications on mobile?")),
    doc("desktop-apps", "Desktop apps", "apps",
        "Desktop apps are available for macOS 13 or later and Windows 10 or later. There is no native Linux app, "
        "but Linux users can use the web app in Chrome or Firefox. The desktop apps update automatically.",
        qa("Is there a Linux desktop app?",
           "There is no native Linux app, but Linux users can use the web app in Chrome or Firefox.",
           "linux app?", "Can I install Tasklane on Ubuntu?"),
        qa("Which macOS version does the desktop app need?",
           "Desktop apps are available for macOS 13 or later and Windows 10 or later.",
           "mac app requirements", "Does the desktop app run on Windows 10?"),
        qa("How do I update the desktop app?", "The desktop apps update automatically.",
           "update desktop app", "Do I need to download new versions of the desktop app manually")),
    doc("browser-support", "Supported browsers", "apps",
        "The web app supports the latest two versions of Chrome, Firefox, Safari and Edge. Internet Explorer is "
        "not supported. Cookies and JavaScript must be enabled to use the web app.",
        qa("Which browsers are supported?",
           "The web app supports the latest two versions of Chrome, Firefox, Safari and Edge.",
           "supported browsers", "Does Tasklane work in Safari?"),
        qa("Does Tasklane work in Internet Explorer?", "Internet Explorer is not supported.",
           "IE support?", "internet explorer 11 supported?")),
    # --- features ----------------------------------------------------------
    doc("automations", "Automations", "features",
        "Automations run an action when a trigger fires, such as moving a task when its status changes. The Team "
        "plan includes 250 automation runs per month and the Business plan includes 5,000 runs per month. "
        "Enterprise plans have unlimited automation runs.",
        qa("How many automation runs do I get on Team?",
           "The Team plan includes 250 automation runs per month and the Business plan includes 5,000 runs per month.",
           "automation limit team plan", "How many automations per month on Team?", follow="And on Business?"),
        qa("Are automation runs unlimited on Enterprise?", "Enterprise plans have unlimited automation runs.",
           "enterprise automation limits", "unlimited automations?"),
        qa("What are automations?",
           "Automations run an action when a trigger fires, such as moving a task when its status changes.",
           "what do automations do", "How do Tasklane automations work?")),
    doc("recurring-tasks", "Recurring tasks", "features",
        "Any task can repeat daily, weekly, monthly or on a custom schedule. The next occurrence of a recurring "
        "task is created when the current one is completed. Recurring tasks keep their assignee, subtasks and "
        "checklist.",
        qa("Can tasks repeat every week?", "Any task can repeat daily, weekly, monthly or on a custom schedule.",
           "recurring tasks weekly", "How do I make a repeating task?"),
        qa("When is the next occurrence of a recurring task created?",
           "The next occurrence of a recurring task is created when the current one is completed.",
           "when does next recurring task appear",
           "Does the next recurrence get created before I finish the current one?"),
        qa("Do recurring tasks keep their subtasks?", "Recurring tasks keep their assignee, subtasks and checklist.",
           "recurring task subtasks", "Are checklists copied to the next recurrence?")),
    doc("timeline-view", "Timeline view", "features",
        "Timeline view shows tasks as bars on a Gantt-style chart with dependencies. Timeline view is available "
        "on the Team plan and above. A timeline can be exported as PNG or PDF from the View menu.",
        qa("Is there a Gantt chart?", "Timeline view shows tasks as bars on a Gantt-style chart with dependencies.",
           "gantt view?", "Does Tasklane have a timeline / Gantt chart"),
        qa("Which plans have timeline view?", "Timeline view is available on the Team plan and above.",
           "timeline view on free plan", "Do I need Team for the timeline?"),
        qa("Can I export the timeline?", "A timeline can be exported as PNG or PDF from the View menu.",
           "export gantt as pdf", "How do I save the timeline as an image?")),
    doc("task-dependencies", "Task dependencies", "features",
        "A task can be blocked by up to 20 other tasks. When a blocking task is completed, the assignee of the "
        "blocked task is notified. Circular dependencies are rejected with an error.",
        qa("How many dependencies can a task have?", "A task can be blocked by up to 20 other tasks.",
           "max blockers per task", "Dependency limit per task?"),
        qa("Am I notified when a blocking task is done?",
           "When a blocking task is completed, the assignee of the blocked task is notified.",
           "notification when blocker done", "Will I know when my task is unblocked"),
        qa("Can I create circular dependencies?", "Circular dependencies are rejected with an error.",
           "circular dependency", "What if two tasks block each other?")),
    doc("time-tracking", "Time tracking", "features",
        "Business plans include a built-in timer on every task. Time entries can be exported to CSV from Reports "
        "> Time. Manual time entries can be edited for up to 30 days after they are logged.",
        qa("Does Tasklane have time tracking?", "Business plans include a built-in timer on every task.",
           "time tracking?", "Is there a timer on tasks"),
        qa("How do I export time entries?", "Time entries can be exported to CSV from Reports > Time.",
           "export timesheet csv", "Where can I download time entries?"),
        qa("How long can I edit a manual time entry?",
           "Manual time entries can be edited for up to 30 days after they are logged.",
           "edit time entry later", "Can I change a time log from last month?")),
    doc("import-tools", "Importing from other tools", "features",
        "Tasklane can import projects from Trello, Asana, Jira and CSV files. Imports keep assignees, due dates, "
        "comments and attachments. Jira imports are limited to 10,000 issues per import.",
        qa("Can I import from Trello?", "Tasklane can import projects from Trello, Asana, Jira and CSV files.",
           "import from asana", "Which tools can I import projects from?"),
        qa("Do imports keep comments and attachments?",
           "Imports keep assignees, due dates, comments and attachments.",
           "import keeps comments?", "What data is kept when importing?"),
        qa("Is there a limit on Jira imports?", "Jira imports are limited to 10,000 issues per import.",
           "jira import limit", "How many Jira issues can I import at once?")),
    doc("notifications", "Notifications", "features",
        "Email digests can be set to instant, hourly or daily under Profile > Notifications. Do Not Disturb "
        "pauses all push notifications for a set time. Notifications about followed tasks always appear in your "
        "Inbox.",
        qa("Can I get a daily email digest instead of instant emails?",
           "Email digests can be set to instant, hourly or daily under Profile > Notifications.",
           "daily digest", "How do I reduce notification emails?"),
        qa("How do I pause notifications?", "Do Not Disturb pauses all push notifications for a set time.",
           "do not disturb", "Can I mute push notifications for a few hours?")),
    doc("search", "Search", "features",
        "Search covers task titles, descriptions, comments and attachment names. Use quotes for exact phrases and "
        "the assignee: prefix to filter by person. Archived projects are excluded from search unless you tick "
        "Include archived.",
        qa("Does search include comments?",
           "Search covers task titles, descriptions, comments and attachment names.",
           "search comments", "What does Tasklane search look through?"),
        qa("How do I search for an exact phrase?",
           "Use quotes for exact phrases and the assignee: prefix to filter by person.",
           "exact phrase search", "How to filter search by assignee?"),
        qa("Why don't archived projects show up in search?",
           "Archived projects are excluded from search unless you tick Include archived.",
           "search archived projects", "How do I include archived projects in search results?")),
    doc("archive-projects", "Archiving projects", "features",
        "Archived projects are read-only and do not count toward the Free plan project limit. An archived project "
        "can be restored at any time from Projects > Archived. Archived projects are never deleted automatically.",
        qa("Do archived projects count toward the Free plan limit?",
           "Archived projects are read-only and do not count toward the Free plan project limit.",
           "archived projects free limit", "Does archiving free up a project slot?"),
        qa("How do I restore an archived project?",
           "An archived project can be restored at any time from Projects > Archived.",
           "unarchive project", "Bring back an archived project?"),
        qa("Are archived projects deleted after a while?", "Archived projects are never deleted automatically.",
           "archived projects deleted automatically?", "Will old archived projects be removed?")),
    doc("ai-assistant", "Tasklane AI", "features",
        "Tasklane AI summarizes task threads and drafts status updates. Tasklane AI is included on Business and "
        "Enterprise plans with 500 AI credits per user per month. Customer data is not used to train AI models.",
        qa("Is Tasklane AI included in my plan?",
           "Tasklane AI is included on Business and Enterprise plans with 500 AI credits per user per month.",
           "ai credits per month", "Which plans include Tasklane AI?"),
        qa("Is my data used to train AI models?", "Customer data is not used to train AI models.",
           "do you train ai on our data", "Does Tasklane AI use customer data for training?"),
        qa("What can Tasklane AI do?", "Tasklane AI summarizes task threads and drafts status updates.",
           "what does tasklane ai do", "Tasklane AI features?")),
    doc("project-templates", "Project templates", "features",
        "Project templates save a project's sections, tasks and custom fields for reuse. Team plans can save up "
        "to 20 templates and Business plans can save unlimited templates. Templates are shared with the whole "
        "workspace from Templates > Share.",
        qa("How many templates can I save on Team?",
           "Team plans can save up to 20 templates and Business plans can save unlimited templates.",
           "template limit team", "max project templates"),
        qa("What does a project template include?",
           "Project templates save a project's sections, tasks and custom fields for reuse.",
           "what's saved in a template", "Do templates keep custom fields?"),
        qa("How do I share a template with my team?",
           "Templates are shared with the whole workspace from Templates > Share.",
           "share template", "Can other people in the workspace use my template?")),
    doc("board-view", "Board view", "features",
        "Board view shows tasks as cards in columns by status. Work-in-progress limits can be set per column on "
        "Business plans. Cards can be moved between columns by drag and drop or with Shift+Arrow keys.",
        qa("Can I set WIP limits on the board?",
           "Work-in-progress limits can be set per column on Business plans.",
           "wip limits", "work in progress limit per column?"),
        qa("How do I move cards with the keyboard?",
           "Cards can be moved between columns by drag and drop or with Shift+Arrow keys.",
           "move card keyboard", "shortcut to move a card between columns")),
    # --- account -----------------------------------------------------------
    doc("guests", "Guest access", "account",
        "Guests can view and comment on projects they are invited to, but cannot create projects. Business plans "
        "include 3 free guests per paid seat. Guests are not available on the Free plan.",
        qa("What can guests do?",
           "Guests can view and comment on projects they are invited to, but cannot create projects.",
           "guest permissions", "Can guests create projects?"),
        qa("How many guests can I invite on Business?", "Business plans include 3 free guests per paid seat.",
           "guest limit business", "How many free guests per seat?"),
        qa("Can I invite guests on the Free plan?", "Guests are not available on the Free plan.",
           "guests on free plan", "Do free workspaces allow guests")),
    doc("roles-permissions", "Roles and permissions", "account",
        "Workspaces have four roles: Owner, Admin, Member and Guest. Only Owners can manage billing and delete the "
        "workspace. Admins can manage members, integrations and security settings.",
        qa("What roles are there in a workspace?", "Workspaces have four roles: Owner, Admin, Member and Guest.",
           "user roles", "Which roles does Tasklane support?"),
        qa("Who can manage billing?", "Only Owners can manage billing and delete the workspace.",
           "can admins change billing", "Who has access to billing settings?"),
        qa("What can Admins do?", "Admins can manage members, integrations and security settings.",
           "admin permissions", "What are admins allowed to manage?")),
    doc("ownership-transfer", "Transferring workspace ownership", "account",
        "The current Owner can transfer ownership to any Admin from Admin > Members. The previous Owner becomes an "
        "Admin after the transfer. If the Owner has left the company, support can transfer ownership after "
        "verifying a company domain email.",
        qa("How do I transfer workspace ownership?",
           "The current Owner can transfer ownership to any Admin from Admin > Members.",
           "transfer ownership", "Make someone else the owner?"),
        qa("Our owner left the company, how do we get ownership?",
           "If the Owner has left the company, support can transfer ownership after verifying a company domain email.",
           "owner left company", "The workspace owner quit, what now?"),
        qa("What happens to the old Owner after a transfer?",
           "The previous Owner becomes an Admin after the transfer.",
           "previous owner role after transfer", "Does the old owner lose access after transferring?")),
    # --- support -----------------------------------------------------------
    doc("uptime-sla", "Uptime and SLA", "support",
        "Tasklane targets 99.9% monthly uptime on all plans. Enterprise plans include a 99.95% uptime SLA with "
        "service credits. Live system status is published at status.tasklane.com.",
        qa("What uptime does Tasklane guarantee?", "Tasklane targets 99.9% monthly uptime on all plans.",
           "uptime guarantee", "What's your availability target?"),
        qa("Is there an SLA for Enterprise?", "Enterprise plans include a 99.95% uptime SLA with service credits.",
           "enterprise sla", "Do Enterprise customers get service credits?"),
        qa("Where can I check system status?", "Live system status is published at status.tasklane.com.",
           "status page", "Is Tasklane down? where do I check")),
    doc("support-hours", "Support hours and channels", "support",
        "Support is available by chat and email Monday to Friday, 8:00 to 20:00 UTC. Business customers get a "
        "first response within 8 hours and Enterprise customers within 1 hour. Free plan users get community "
        "forum support only.",
        qa("What are your support hours?", "Support is available by chat and email Monday to Friday, 8:00 to 20:00 UTC.",
           "support hours?", "When is support available"),
        qa("How fast does support respond on Business?",
           "Business customers get a first response within 8 hours and Enterprise customers within 1 hour.",
           "response time business", "What's the first response time for Enterprise?", follow="And for Enterprise?"),
        qa("Do Free plan users get support?", "Free plan users get community forum support only.",
           "support for free users", "Can I contact support on the Free plan?")),
    doc("support-escalation", "Support escalation (internal)", "support",
        "Urgent Enterprise incidents are escalated to the on-call support engineer within 30 minutes. The current "
        "escalation lead is Priya Natarajan (priya.natarajan@tasklane-internal.com, +1 415 555 0134). Escalations "
        "outside business hours go through the PagerDuty on-call rotation.",
        qa("How quickly are urgent Enterprise incidents escalated?",
           "Urgent Enterprise incidents are escalated to the on-call support engineer within 30 minutes.",
           "escalation time urgent incident", "How fast does an urgent Enterprise ticket get escalated?"),
        qa("How are escalations handled outside business hours?",
           "Escalations outside business hours go through the PagerDuty on-call rotation.",
           "after hours escalation", "Who handles escalations at night?"),
        pii=True),
]

# ---------------------------------------------------------------------------
# Questions the knowledge base cannot answer
# ---------------------------------------------------------------------------


def unq(q, topic, kb_topic, paras=(), fake=None, real=None):
    """An unanswerable question: topic (for reviewer comments), nearest KB topic,
    paraphrases, the answer a hallucinating model invents, and what a reviewer
    would write (never in the KB)."""
    return {"q": q, "topic": topic, "kb_topic": kb_topic, "paras": list(paras), "fake": fake, "real": real}


UNANSWERABLE = [
    unq("Does Tasklane integrate with SAP Ariba?", "SAP Ariba", "integrations",
        ["does tasklane integrate with sap ariba", "Is there an SAP Ariba connector?"],
        "Yes, Tasklane has a native SAP Ariba integration that syncs purchase orders into tasks.",
        "There is no native SAP Ariba integration; customers connect it through Zapier."),
    unq("What is the CEO's favourite colour?", "company trivia", "support",
        ["whats the ceos favorite color"], "The CEO's favourite colour is teal, which is why the logo is teal."),
    unq("Is there a HIPAA BAA available?", "HIPAA", "security",
        ["can you sign a HIPAA BAA?", "Do you offer a business associate agreement"],
        "Yes, Tasklane signs a HIPAA BAA on the Business plan.",
        "Tasklane does not sign BAAs today and should not be used for PHI."),
    unq("Does Tasklane have an on-premise version?", "on-premise deployment", "security",
        ["is there a self-hosted tasklane", "Can we run Tasklane on our own servers?"],
        "Yes, Tasklane Server can be installed on-premise with an Enterprise licence.",
        "There is no on-premise or self-hosted edition; Tasklane is cloud-only."),
    unq("What is the maximum length of a task title?", "task title length", "limits",
        ["max characters in a task title"], "Task titles can be up to 80 characters long.",
        "Task titles can be up to 500 characters."),
    unq("Can I white-label the client portal?", "white-labelling", "features",
        ["can we remove tasklane branding for clients"],
        "Yes, you can white-label the client portal with your logo and domain on Business."),
    unq("Does the Android app support Wear OS watches?", "Wear OS", "apps",
        ["wear os support?"], "Yes, the Android app includes a Wear OS tile for today's tasks."),
    unq("How do I change the workspace's default time zone?", "workspace time zones", "features",
        ["change default timezone for workspace", "Where is the time zone setting?"],
        "Admins can change the default time zone under Admin > Regional > Time zone.",
        "Time zones are set per member under Profile > Preferences; there is no workspace default."),
    unq("When will the Linux desktop app be released?", "Linux app roadmap", "apps",
        ["linux desktop app release date?"], "The native Linux desktop app will be released in December 2026."),
    unq("Is Tasklane FedRAMP authorized?", "FedRAMP", "security",
        ["fedramp status"], "Yes, Tasklane has FedRAMP Moderate authorization.",
        "Tasklane is not FedRAMP authorized."),
    unq("Can project budgets use multiple currencies?", "multi-currency budgets", "features",
        ["multi currency budgets?"], "Yes, each project budget can use any of 30 currencies."),
    unq("Where is Tasklane's headquarters?", "company information", "support",
        ["where is your head office located"], "Tasklane is headquartered in Austin, Texas."),
    unq("How many employees does Tasklane have?", "company information", "support",
        ["how big is the tasklane team"], "Tasklane has about 1,200 employees worldwide."),
    unq("Does Tasklane support right-to-left languages like Arabic?", "right-to-left languages", "apps",
        ["RTL support for arabic and hebrew?"], "Yes, the whole interface supports right-to-left layouts."),
    unq("Can I embed a Tasklane board in Notion?", "Notion embeds", "integrations",
        ["embed board in notion page"], "Yes, paste the board link into Notion and it renders as a live embed.",
        "Boards can't be embedded in Notion yet; share a read-only link instead."),
    unq("What is the API endpoint for bulk deleting comments?", "bulk comment deletion API", "api",
        ["bulk delete comments endpoint"], "Use DELETE /v2/comments/bulk with up to 500 comment IDs."),
    unq("Is there a reseller or partner program?", "partner program", "billing",
        ["do you have a partner program for agencies"], "Yes, resellers get a 25% margin through the Tasklane Partner Program."),
    unq("Can I book an onboarding call with a customer success manager?", "onboarding calls", "support",
        ["onboarding call with CSM?"], "Yes, every Team workspace can book a free 60-minute onboarding call.",
        "Onboarding calls are included for Enterprise customers; others can use the webinar library."),
    unq("Does the web app have a dark mode?", "dark mode", "apps",
        ["dark theme?", "Is there dark mode in Tasklane web"], "Yes, turn on dark mode under Profile > Appearance."),
    unq("Can I get a W-9 form for vendor onboarding?", "tax forms (W-9)", "billing",
        ["w9 form please"], "Yes, the W-9 form is available under Settings > Billing > Tax documents.",
        "Our finance team sends W-9 forms on request through the billing support form."),
    unq("Does the API expose a GraphQL schema?", "GraphQL API", "api",
        ["graphql api?"], "Yes, the GraphQL schema is available at /graphql with introspection enabled."),
    unq("Can a task be assigned to several people at once?", "multiple assignees", "features",
        ["multiple assignees per task?"], "Yes, Business plans allow up to 5 assignees per task."),
    unq("Is there a limit on the number of comments per task?", "comment limits", "limits",
        ["max comments on a task"], "Each task can have up to 1,000 comments."),
    unq("Do task descriptions support Markdown tables?", "Markdown tables", "features",
        ["markdown tables in descriptions?"], "Yes, task descriptions render GitHub-flavoured Markdown tables."),
    unq("Can I schedule a report to be emailed every Monday?", "scheduled reports", "features",
        ["schedule weekly report email"], "Yes, open Reports > Schedule and choose Weekly on Monday."),
    unq("What happens to my data if Tasklane shuts down?", "business continuity", "data",
        ["if tasklane goes out of business what about our data"],
        "Tasklane keeps a source-code and data escrow so customers get 12 months of read-only access."),
]

UNSUPPORTED_TOOLS = ["Salesforce", "HubSpot", "Zendesk", "Figma", "Miro", "Workday", "QuickBooks", "Xero",
                     "ServiceNow", "Airtable", "Freshdesk", "Linear"]
LANGUAGES = ["Japanese", "Portuguese", "Korean", "Polish", "Turkish", "Dutch", "Hindi"]
STANDARDS = ["ISO 27001", "PCI DSS", "HITRUST", "C5", "IRAP", "ISO 27701"]


def build_unanswerable():
    """Fixed unanswerable questions plus a few slot-filled families."""
    items = list(UNANSWERABLE)
    for tool in UNSUPPORTED_TOOLS:
        items.append(unq(f"Does Tasklane integrate with {tool}?", f"{tool} integration", "integrations", [],
                         f"Yes, Tasklane has a native {tool} integration that syncs tasks every 5 minutes.",
                         f"There is no native {tool} integration yet; {tool} can be connected through Zapier or Make."))
    for lang in LANGUAGES:
        items.append(unq(f"Is the Tasklane interface available in {lang}?", f"{lang} localization", "apps", [],
                         f"Yes, Tasklane is fully translated into {lang}; change it under Profile > Language."))
    for std in STANDARDS:
        items.append(unq(f"Is Tasklane {std} certified?", f"{std} certification", "security", [],
                         f"Yes, Tasklane is {std} certified and the certificate is in the Trust Center."))
    return items


# ---------------------------------------------------------------------------
# Query framing, response styles, reviewer notes
# ---------------------------------------------------------------------------

LEADS = ["Hi, ", "Hello! ", "Quick question: ", "hey, ", "Sorry if this is obvious, but ",
         "We're evaluating Tasklane for our team. ", "I'm the admin of our workspace. ",
         "Question from our finance team: ", "Before we renew: ", "Asking for my manager: ", "Hi there, ",
         "Good morning! ", "Urgent: ", "Hi support, ", "Hey team, ", "Our agency just signed up. ",
         "I couldn't find this in the help center. ", "Newbie here. ", "hello, ", "Q: "]
TAILS = [" Thanks!", " Thanks in advance.", " Cheers", " ty", " Please advise.", " (asking for our IT team)",
         " Thx", " 🙏", " Appreciate it.", " thanks"]
# Longer situational context for repeated questions, so that distinct records stay distinct
# under a character-shingle near-duplicate check.
PERSONAS = ["We're a 12-person design agency", "I run IT for a 300-seat logistics company",
            "I'm a freelance developer with a few clients", "Our nonprofit has about 40 volunteers",
            "I manage a remote team of 9 engineers", "We're a small accounting firm in Leeds",
            "I'm the office manager at a dental clinic", "Our university lab has 15 researchers",
            "I lead marketing ops at a retail chain", "We're a two-person startup",
            "I'm evaluating tools for our 80-person sales org", "Our construction company tracks jobs in spreadsheets",
            "I coordinate a wedding planning business", "We're a game studio with 25 artists",
            "I'm a project manager at a law firm", "Our school district's IT team is piloting Tasklane",
            "I volunteer as admin for a football club", "We're a biotech with strict compliance rules",
            "I handle procurement for a city council", "Our support team of 30 lives in Tasklane"]
SITUATIONS = ["and we just moved over from Trello.", "and we're on the Business plan.", "and our renewal is next week.",
              "and my boss asked me to check this.", "and we're about to roll Tasklane out to everyone.",
              "and our trial started yesterday.", "and we're comparing you with Asana.",
              "and our security review is on Friday.", "and I'm writing our internal how-to guide.",
              "and finance wants an answer today.", "and half the team works from their phones.",
              "and we use Okta for everything.", "and I couldn't find it in the docs.",
              "and we're still on the Team plan.", "and legal keeps asking me about this.",
              "and I'm new to the admin role."]
FOLLOW_LEADS = ["And ", "Also, ", "One more: ", "Follow-up: ", "Thanks. ", "ok and ", "Got it. ",
                "Great, thanks. Another one: ", "That helps. My colleague is also asking: ",
                "Perfect. While I have you, ", "Thanks! Next question from our admin: ", "OK. Before I forget, ",
                "Makes sense. Related question: ", "Cool. And for our finance team: ", "Understood. Last thing, "]
SIMILAR = 0.6               # fresh queries stay below this char-5-gram Jaccard to every earlier query
DETECT = 0.7                # similarity reported as "near-duplicate" in the summary

# {q} is the question; other fields are filled by FakePII.
PII_TEMPLATES = {
    "generic": ["I'm {name} ({email}). {q}", "{q} You can reach me at {email} or {phone}.",
                "Hi, this is {name}, phone {phone}. {q}", "{q} My IP is {ip} if that helps.",
                "Our office IP {ip} might matter here. {q}", "{q} Please reply to {email}, not my work address."],
    "billing": ["My card {card} was charged twice, email me at {email}. {q}", "{q} We pay from IBAN {iban}.",
                "I paid with card {card} last week. {q}", "Our finance team wants to pay from {iban}. {q}",
                "{q} The card on file is {card}, exp 09/28."],
    "secret": ["{q} Here's my key in case you need it: {openai_key}", "We use the token {github_token} in CI. {q}",
               "My Slack bot token is {slack_token} — {q}", "{q} Our AWS key is {aws_key}.",
               "Stripe key {stripe_key} stopped working with the webhook. {q}",
               "Getting 401 with this JWT: {jwt}. {q}",
               "{q} This is the private key our webhook verifier uses:\n{pem}"],
    "email": ["I'm {name} ({email}). {q}", "{q} You can reach me at {email} or {phone}.",
              "My card {card} was charged twice, email me at {email}. {q}",
              "{q} Please reply to {email}, not my work address."],
}
PII_TEMPLATE_GROUP = {"billing": "billing", "api": "secret", "integrations": "secret", "security": "secret"}

PLAIN_STYLES = ["{gold}", "{gold} (Source: {title})", "According to our {title_l} article, {gold_l}",
                "- {gold}\n- Source: {id}", "**Answer:** {gold}\n\n_Source: [{id}]_",
                "Sure! {gold} Let me know if you need anything else.", "{cited}",
                "Here's what I found:\n\n* {gold}\n* See {title} for details."]
PLAIN_STYLES_UNCITED = ["{gold}", "Sure! {gold} Let me know if you need anything else.",
                        "Here's what I found:\n\n* {gold}", "**Answer:** {gold}", "Good question. {gold}"]
RUDE_STYLES = ["Lol, just read the docs. {ans}", "Ugh, this is literally in the help center: {ans}",
               "{ans} Not sure why that was so hard to find 🙄", "k. {ans}",
               "Seriously? {ans} Please try searching before asking.", "As I've said a million times, {ans_l}",
               "{ans} You're welcome, I guess.", "yo!! {ans} easy peasy lol", "Wow. {ans} Next time maybe RTFM?",
               "Not my job to read for you, but fine: {ans}"]
POLICY_VIOLATIONS = [
    ("refund", "As a one-time exception I've approved a full refund even though you're outside the 30-day window."),
    ("refund", "Don't worry about the policy, I'll make sure you get your money back for the whole year."),
    ("discount", "I've also added a 40% lifetime discount to your workspace as a goodwill gesture."),
    ("discount", "Tell sales I said so and they'll match any competitor's price."),
    ("other_customer", "Another customer, Northwind Traders, had the same question; their admin is "
                       "dana.whitfield@northwind-example.com if you want to compare notes."),
    ("other_customer", "Acme Corp's workspace uses exactly this setup, so I can send you their configuration export."),
    ("legal", "Legally you don't need a DPA with us; GDPR doesn't apply if your users are outside the EU."),
    ("legal", "If your vendor refuses, you have a strong case to sue them for breach of contract."),
    ("legal", "You can ignore an employee's data deletion request for 90 days; that's within the law."),
    ("roadmap", "Between us, the native Linux app ships next month, so you can plan around it."),
    ("security", "You can skip the identity check; tell me the workspace name and I'll transfer ownership now."),
    ("security", "Just send me your password and I'll reset 2FA for you right away."),
]
POLICY_BY_TOPIC = {"billing": ["refund", "discount", "other_customer"], "security": ["security", "legal"],
                   "data": ["legal", "other_customer"], "account": ["security", "other_customer"],
                   "apps": ["roadmap", "discount"]}

COMMENTS = {
    "positive": ["perfect", "exactly right", "👍", "great answer", "thanks, that solved it", "correct and well cited"],
    "bad_format": ["not JSON, the widget showed raw text", "should be the JSON answer object",
                   "markdown instead of JSON", "format broken again", "UI couldn't parse this"],
    "wrong_tone": ["too snarky for a customer", "unprofessional tone", "customer complained about the tone",
                   "please keep it polite", "never say 'lol' to a customer"],
    "missing_citation": ["no sources cited", "answer is right but has no citations", "needs a [doc] reference",
                         "where's the citation?"],
    "hallucination": ["wrong number, the doc says: {right}", "made that up, see {doc}", "the {title} doc says otherwise",
                      "incorrect: {right}"],
    "hallucination_no_context": ["made up, none of the docs say this", "we don't support this, the bot invented it",
                                 "hallucinated an answer about {topic}"],
    "missing_knowledge": ["we need docs on {topic}", "KB has nothing on {topic}", "add an article about {topic}",
                          "customers keep asking about {topic}"],
    "wrong_retrieval": ["retriever pulled the wrong docs; answer is in {doc}", "contexts are irrelevant",
                        "search should have found {doc}"],
    "weak_reasoning": ["math is wrong, should be {right}", "arithmetic error", "wrong calculation, it's {right}"],
}
POLICY_COMMENTS = {"refund": "promised a refund exception, not allowed", "discount": "no discounts without sales approval",
                   "other_customer": "shared another customer's details!!", "legal": "this is legal advice, we can't give that",
                   "roadmap": "never share unannounced roadmap dates",
                   "security": "bypassing identity verification is a hard no"}
STALE_COMMENTS = {"pricing-2024": "pricing changed in 2025", "free-plan-2024": "pricing changed in 2025, Free is 5 members now",
                  "refund-policy-2023": "refund policy changed, it's 30 days for yearly plans now",
                  "storage-limits-2024": "storage limits were raised in 2025",
                  "api-rate-limits-v1": "that's the old v1 API doc"}
PII_COMMENT_TEMPLATES = ["customer pasted their card {card} in the chat, scrub before using this",
                         "follow up with the customer at {email}", "user shared a live key ({stripe_key}); asked them to rotate it",
                         "same user called from {phone} about this", "their IP {ip} is in the transcript, remove before export"]
MK_PLAIN = ["Sorry, I couldn't find anything about that in our documentation.", "I don't know, the docs don't say.",
            "Hmm, not sure! Maybe ask support?"]

# ---------------------------------------------------------------------------
# Fake PII and secrets (all values are synthetic)
# ---------------------------------------------------------------------------

FIRST = ["jane", "carlos", "aiko", "fatima", "liam", "mei", "olusegun", "sofia", "noah", "priya", "lukas", "amara"]
LAST = ["doe", "mendes", "tanaka", "alsayed", "oconnor", "chen", "bello", "rossi", "schmidt", "sharma", "novak", "okafor"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.co.uk", "contoso.example", "acme-corp.example"]
ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
B64URL = string.ascii_letters + string.digits + "-_"
B64 = string.ascii_letters + string.digits + "+/"


def luhn_ok(number):
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return total % 10 == 0


def luhn_complete(payload):
    return next(payload + str(c) for c in range(10) if luhn_ok(payload + str(c)))


def iban_ok(iban):
    s = iban.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def make_iban(country, bban):
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


def group4(s, sep=" "):
    return sep.join(s[i:i + 4] for i in range(0, len(s), 4))


KNOWN_CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "4242424242424242", "378282246310005"]
KNOWN_IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]
assert all(luhn_ok(c) for c in KNOWN_CARDS) and all(iban_ok(i) for i in KNOWN_IBANS)


class FakePII:
    """Draws realistic-looking, fake personal data and secrets from an rng."""

    def __init__(self, rng):
        self.rng = rng

    def _chars(self, alphabet, n):
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def name(self):
        return f"{self.rng.choice(FIRST).title()} {self.rng.choice(LAST).title()}"

    def email(self):
        if self.rng.random() < 0.15:
            return "jane.doe@example.com"
        sep = self.rng.choice([".", "_", ""])
        return f"{self.rng.choice(FIRST)}{sep}{self.rng.choice(LAST)}@{self.rng.choice(DOMAINS)}"

    def phone(self):
        d = lambda n: self._chars(string.digits, n)  # noqa: E731
        return self.rng.choice([
            f"+1 415 555 0{d(3)}", f"(212) 555-0{d(3)}", f"646-555-0{d(3)}", f"+44 20 7946 0{d(3)}",
            f"+49 30 {d(4)} {d(4)}", f"+91 98{d(3)} {d(5)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+61 2 {d(4)} {d(4)}"])

    def card(self):
        if self.rng.random() < 0.35:
            return self.rng.choice(KNOWN_CARDS)
        prefix = self.rng.choice(["4", "51", "52", "53", "54", "55"])
        number = luhn_complete(prefix + self._chars(string.digits, 15 - len(prefix)))
        assert luhn_ok(number)
        return self.rng.choice([group4(number), group4(number, "-"), number])

    def iban(self):
        if self.rng.random() < 0.35:
            return self.rng.choice(KNOWN_IBANS)
        digits = lambda n: self._chars(string.digits, n)  # noqa: E731
        country, bban = self.rng.choice([
            ("DE", digits(18)), ("GB", self._chars(string.ascii_uppercase, 4) + digits(14)),
            ("NL", self._chars(string.ascii_uppercase, 4) + digits(10)), ("FR", digits(23))])
        iban = make_iban(country, bban)
        assert iban_ok(iban)
        return group4(iban) if self.rng.random() < 0.5 else iban

    def ip(self):
        r = lambda: self.rng.randint(1, 254)  # noqa: E731
        return self.rng.choice([f"203.0.113.{r()}", f"198.51.100.{r()}", f"192.0.2.{r()}",
                                f"10.{r()}.{r()}.{r()}", f"172.16.{r()}.{r()}", f"81.2.69.{r()}"])

    def aws_key(self):
        return "AKIA" + self._chars(UPPER_ALNUM, 16)

    def openai_key(self):
        return "sk-proj-" + self._chars(ALNUM, 40)

    def github_token(self):
        return "ghp_" + self._chars(ALNUM, 36)

    def slack_token(self):
        return f"xoxb-{self._chars(string.digits, 12)}-{self._chars(string.digits, 13)}-{self._chars(ALNUM, 24)}"

    def stripe_key(self):
        return "sk_live_" + self._chars(ALNUM, 24)

    def jwt(self):
        enc = lambda obj: base64.urlsafe_b64encode(  # noqa: E731
            json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()
        payload = {"sub": f"user_{self.rng.randint(1000, 99999)}", "email": self.email(),
                   "iat": 1790800000 + self.rng.randint(0, 2_000_000)}
        return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.{self._chars(B64URL, 43)}"

    def pem(self):
        body = ["MIIEpAIBAAKCAQEA" + self._chars(B64, 48)] + [self._chars(B64, 64) for _ in range(5)]
        body.append(self._chars(B64, 28) + "==")
        return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----"

    def fill(self, template, **fixed):
        """Format ``template``, generating each PII field it names once."""
        values = dict(fixed)
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        if "name" in fields and "email" in fields:  # keep the email consistent with the name
            values["name"] = self.name()
            first, last = values["name"].lower().split()
            values["email"] = f"{first}.{last}@{self.rng.choice(DOMAINS)}"
        for field in fields:
            if field not in values:
                values[field] = getattr(self, field)()
        return template.format(**values), values


# ---------------------------------------------------------------------------
# Small text helpers
# ---------------------------------------------------------------------------

NUM_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?!\w)")


def lower_first(text):
    """Lower-case the first letter unless the first word is 'I' or an acronym."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def frame(lead, question, tail):
    if lead.endswith((", ", ": ", "but ")):
        question = lower_first(question)
    return f"{lead}{question}{tail}"


def cite(sentence, ids):
    body = sentence.rstrip().rstrip(".")
    return f"{body} {''.join(f'[{i}]' for i in ids)}."


def answer_json(text, citations):
    return json.dumps({"answer": text, "citations": list(citations)}, ensure_ascii=False)


IDK_JSON = answer_json(IDK, [])


def perturb_number(rng, sentence):
    """Return ``sentence`` with its first number changed to a wrong one, plus the original number."""
    m = NUM_RE.search(sentence)
    raw = m.group(1)
    if "." in raw and "," not in raw:
        decimals = len(raw.split(".")[1])
        value = float(raw)
        wrong = f"{rng.choice([value - 0.5, value + 0.4, value * 2]):.{decimals}f}"
    else:
        n = int(raw.replace(",", ""))
        step = 10 ** (len(str(n)) - 1)
        options = [x for x in (n * 2, n + (1 if n < 10 else step), n // 2, n * 3) if x > 0 and x != n]
        choice = rng.choice(options)
        wrong = f"{choice:,}" if "," in raw else str(choice)
    return sentence[:m.start(1)] + wrong + sentence[m.end(1):], raw


def surface_variant(rng, text):
    """A near-identical rewrite: casing, punctuation, whitespace or a typo."""
    for _ in range(10):
        out = text
        kind = rng.choice(["lower", "punct", "typo", "space", "upper_first"])
        if kind == "lower":
            out = text.lower()
        elif kind == "punct":
            out = text.rstrip("?!. ") if text.rstrip().endswith(("?", "!", ".")) else text + "??"
        elif kind == "typo":
            words = text.split(" ")
            idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
            if idx:
                i = rng.choice(idx)
                w = words[i]
                j = rng.randint(1, len(w) - 3)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
                out = " ".join(words)
        elif kind == "space":
            out = text.replace(" ", "  ", 1) + " "
        else:
            out = text[0].upper() + text[1:] if text[:1].islower() else text.upper()
        if out != text:
            return out
    return text + "?"


def quota(rng, n, k):
    flags = [True] * min(k, n) + [False] * max(0, n - k)
    rng.shuffle(flags)
    return flags


# ---------------------------------------------------------------------------
# Weak-reasoning (multi-step arithmetic) questions
# ---------------------------------------------------------------------------


def money(x):
    return f"${x:,.2f}" if x != int(x) else f"${int(x):,}"


def weak_reasoning_case(rng):
    """Return (query, relevant doc ids, correct answer text, wrong answer text, correct value)."""
    kind = rng.choice(["team_yearly", "business_monthly", "switch_savings", "api_minutes", "guests",
                       "nonprofit", "trial"])
    n = rng.randint(3, 40)
    if kind == "team_yearly":
        q = f"If my team of {n} is on the Team plan billed yearly, what do we pay per year?"
        right = n * 120
        head = "On yearly billing the Team plan is $10 per user per month [pricing], so "
        good = f"{head}{n} users pay {n} × $10 × 12 = {money(right)} per year."
        bad = rng.choice([f"{head}{n} users pay {n} × $10 = {money(n * 10)} per year.",
                          f"{head}{n} users pay {n} × $10 × 12 = {money(right + rng.choice([-240, -120, 100, 360]))} per year.",
                          f"{head}{n} users pay {n} × $12 × 12 = {money(n * 144)} per year."])
        return q, ["pricing"], good, bad, money(right)
    if kind == "business_monthly":
        q = f"We have {n} people on the Business plan billed monthly. What is our monthly bill?"
        head = "Business billed monthly is $24 per user per month [pricing], so "
        good = f"{head}{n} × $24 = {money(n * 24)} per month."
        bad = rng.choice([f"{head}{n} × $24 = {money(n * 24 - 24)} per month.",
                          f"{head}{n} × $20 = {money(n * 20)} per month.",
                          f"{head}{n} + $24 = {money(n + 24)} per month."])
        return q, ["pricing"], good, bad, money(n * 24)
    if kind == "switch_savings":
        q = f"How much would {n} Team users save per year by switching from monthly to yearly billing?"
        head = "Team costs $12 per user per month billed monthly and $10 billed yearly [pricing], so "
        good = f"{head}{n} users save {n} × $2 × 12 = {money(n * 24)} per year."
        bad = rng.choice([f"{head}{n} users save {n} × $2 = {money(n * 2)} per year.",
                          f"{head}{n} users save {n} × $2 × 12 = {money(n * 24 + 12)} per year.",
                          f"{head}{n} users save {n} × $10 × 12 = {money(n * 120)} per year."])
        return q, ["pricing"], good, bad, money(n * 24)
    if kind == "api_minutes":
        m = rng.randint(2, 90)
        q = f"On the Team plan, how many API requests can one token make in {m} minutes?"
        head = "The Team plan allows 100 requests per minute per token [api-rate-limits], so "
        good = f"{head}{m} minutes allow {m} × 100 = {m * 100:,} requests."
        bad = rng.choice([f"{head}{m} minutes allow {m} × 60 = {m * 60:,} requests.",
                          f"{head}{m} minutes allow {m} × 100 = {m * 100 + 100:,} requests.",
                          f"{head}{m} minutes allow 100 + {m} = {m + 100:,} requests."])
        return q, ["api-rate-limits"], good, bad, f"{m * 100:,}"
    if kind == "guests":
        q = f"Our Business workspace has {n} paid seats. How many free guests can we invite?"
        head = "Business plans include 3 free guests per paid seat [guests], so "
        good = f"{head}{n} seats give {n} × 3 = {n * 3} guests."
        bad = rng.choice([f"{head}{n} seats give {n} + 3 = {n + 3} guests.",
                          f"{head}{n} seats give {n} × 3 = {n * 3 + 3} guests."])
        return q, ["guests"], good, bad, str(n * 3)
    if kind == "nonprofit":
        q = f"We're a registered nonprofit with {n} users on the Business plan billed yearly. What's our yearly cost?"
        head = ("Business is $20 per user per month billed yearly [pricing] and nonprofits get 50% off "
                "[nonprofit-discount], so ")
        good = f"{head}{n} users pay {n} × $20 × 12 × 50% = {money(n * 120)} per year."
        bad = rng.choice([f"{head}{n} users pay {n} × $20 × 12 = {money(n * 240)} per year.",
                          f"{head}{n} users pay {n} × $24 × 12 × 50% = {money(n * 144)} per year.",
                          f"{head}{n} users pay {n} × $20 × 50% = {money(n * 10)} per year."])
        return q, ["pricing", "nonprofit-discount"], good, bad, money(n * 120)
    d = rng.randint(1, 17)
    q = f"If I start the 14-day free trial on March {d}, on what date does it end?"
    head = "The free trial lasts 14 days [free-trial], so "
    good = f"{head}a trial started on March {d} ends on March {d + 14}."
    bad = rng.choice([f"{head}a trial started on March {d} ends on March {d + 7}.",
                      f"{head}a trial started on March {d} ends on March {d + 4}."])
    return q, ["free-trial"], good, bad, f"March {d + 14}"


# ---------------------------------------------------------------------------
# Plan: cases, flags, sessions and timestamps
# ---------------------------------------------------------------------------

SESSIONABLE = set(BEHAVIOUR_CASES) | {"positive", "no_feedback", "multi_label"}
UNANSWERABLE_CASES = {"hallucination_no_context", "missing_knowledge"}
FAILURE_CASES = set(CASE_COUNTS) - {"positive", "no_feedback"}


def is_unanswerable(entry):
    return entry["case"] in UNANSWERABLE_CASES or "missing_knowledge" in entry["labels"]


def plan_entries(rng):
    """One dict per well-formed record: its case, intended labels and flags."""
    entries = []
    for case, count in CASE_COUNTS.items():
        if case == "multi_label":
            group = [list(labels) for labels, n in MULTI_COMBOS for _ in range(n)]
        else:
            label = {"positive": [], "no_feedback": [],
                     "hallucination_no_context": ["hallucination"]}.get(case, [case])
            group = [list(label) for _ in range(count)]
        assert len(group) == count, case
        unl = quota(rng, count, round(count * UNLABELLED_SHARE) if case in BEHAVIOUR_CASES else 0)
        share = CORRECTION_SHARE.get(case, 0)
        corr = quota(rng, count, round(count * share))
        com = quota(rng, count, round(count * (0.15 if case == "positive" else 0.5 if case in FAILURE_CASES else 0)))
        no_rating = quota(rng, count, round(count * 0.04) if case in FAILURE_CASES else 0)
        for i, labels in enumerate(group):
            entries.append({"case": case, "labels": labels, "unlabelled": unl[i], "correction": corr[i],
                            "comment": com[i], "no_rating": no_rating[i] and not unl[i],
                            "pii_query": False, "pii_comment": False, "pii_correction": False})
    for e in entries:  # knowledge-failure combos keep few corrections
        if e["case"] == "multi_label" and "missing_knowledge" in e["labels"]:
            e["correction"] = e["correction"] and rng.random() < 0.3
    for e, flag in zip(entries, quota(rng, len(entries), round(len(entries) * PII_QUERY_SHARE))):
        e["pii_query"] = flag
    commented = [e for e in entries if e["comment"] and e["case"] in FAILURE_CASES]
    for e in rng.sample(commented, PII_COMMENTS):
        e["pii_comment"] = True
    fixable = [e for e in entries if e["pii_query"] and e["correction"] and e["case"] in BEHAVIOUR_CASES]
    for e in rng.sample(fixable, min(PII_CORRECTIONS, len(fixable))):
        e["pii_correction"] = True
    rng.shuffle(entries)
    return entries


def group_sessions(rng, entries):
    """Group sessionable entries into multi-turn units until SESSION_SHARE is reached."""
    target = round(len(entries) * SESSION_SHARE)
    pool = [e for e in entries if e["case"] in SESSIONABLE and not is_unanswerable(e)]
    rest = [e for e in entries if not (e["case"] in SESSIONABLE and not is_unanswerable(e))]
    units, in_sessions = [], 0
    while in_sessions < target:
        k = min(rng.choice([2, 2, 2, 3, 3, 4]), target - in_sessions)
        if k < 2:
            break
        units.append(pool[:k])
        pool = pool[k:]
        in_sessions += k
    units += [[e] for e in pool + rest]
    rng.shuffle(units)
    return units


def schedule(rng, units):
    """Give every record a time (seconds since LOG_START); sessions stay inside one weekly file."""
    items = []
    for u, unit in enumerate(units):
        gaps = [rng.randint(25, 300) for _ in unit[1:]]
        start = rng.randint(0, 3 * WEEK - 1)
        week_end = (start // WEEK + 1) * WEEK
        if start + sum(gaps) >= week_end:
            start = week_end - sum(gaps) - 1
        t = start
        for turn, entry in enumerate(unit):
            items.append((t, u, turn, entry))
            if turn < len(gaps):
                t += gaps[turn]
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    return items


# ---------------------------------------------------------------------------
# Record content
# ---------------------------------------------------------------------------


WORD_RE = re.compile(r"\w+")


def shingles(text, n=5):
    """Character n-grams of the lowercased words joined by single spaces."""
    norm = " ".join(WORD_RE.findall(text.lower()))
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


class SimilarityIndex:
    """Exact Jaccard similarity of a query to all earlier ones, via an inverted shingle index."""

    def __init__(self):
        self.postings = {}
        self.sizes = []

    def max_similarity(self, text):
        sh = shingles(text)
        overlap = Counter()
        for g in sh:
            overlap.update(self.postings.get(g, ()))
        return max((ov / (len(sh) + self.sizes[i] - ov) for i, ov in overlap.items()), default=0.0)

    def add(self, text):
        sh = shingles(text)
        for g in sh:
            self.postings.setdefault(g, []).append(len(self.sizes))
        self.sizes.append(len(sh))


class LogWriter:
    """Builds the content of each log record (query, contexts, response, feedback, correction)."""

    def __init__(self, rng, unanswerable):
        self.rng = rng
        self.pii = FakePII(rng)
        self.docs = {d["id"]: d for d in KB}
        self.qa_docs = [d for d in KB if d["qa"]]
        self.unanswerable = unanswerable
        self.usage = Counter()
        self.history = []          # earlier queries: {"key", "lead", "tail", "query", "paras", "base"}
        self.similar = SimilarityIndex()
        self.sessions = {}         # unit index -> planned (doc, qa index) per turn
        self.dups_left = round(N_RECORDS * NEAR_DUP_SHARE)
        self.stats = Counter()
        self.stale_pairs = [(d["stale_of"], qi, d["id"]) for d in KB if d["stale_of"] for qi in d["stale"]]

    # -- helpers ------------------------------------------------------------
    def is_numeric(self, key):
        _, doc_id, qi = key
        return bool(NUM_RE.search(self.docs[doc_id]["qa"][qi]["gold"]))

    def candidates(self, need):
        if need == "stale":
            return [("kb", c, qi) for c, qi, _ in self.stale_pairs]
        keys = [("kb", d["id"], i) for d in self.qa_docs for i in range(len(d["qa"]))]
        return [k for k in keys if self.is_numeric(k)] if need == "numeric" else keys

    def pick_least_used(self, keys):
        low = min(self.usage[k] for k in keys)
        return self.rng.choice([k for k in keys if self.usage[k] == low])

    def pii_frame(self, question, topic, need_email):
        group = "email" if need_email else self.rng.choice([PII_TEMPLATE_GROUP.get(topic, "generic"), "generic"])
        text, values = self.pii.fill(self.rng.choice(PII_TEMPLATES[group]), q=question)
        return text, values

    def framing(self, attempt):
        """(lead, tail) for one attempt: short ones first, then longer situational context."""
        rng = self.rng
        tail = rng.choice(TAILS) if rng.random() < 0.3 else ""
        if attempt < 4:
            return (rng.choice(LEADS) if rng.random() < 0.55 else ""), tail
        context = f"{rng.choice(PERSONAS)} {rng.choice(SITUATIONS)}"
        if rng.random() < 0.7:
            return context + " ", tail
        return "", " " + context[0].upper() + context[1:]

    def distinct(self, make, attempts=40):
        """Call ``make(attempt)`` until the query it returns is not a near-duplicate of an earlier one."""
        for attempt in range(attempts):
            out = make(attempt)
            if self.similar.max_similarity(out[0]) < SIMILAR:
                return out
        self.stats["framing_fallback"] += 1
        return out

    def fresh_query(self, key, base, paras, entry, topic):
        """A query for ``key`` that no earlier query nearly duplicates: question, lead-in and/or tail."""
        values, lead, tail = {}, "", ""
        if entry["pii_query"]:
            query, values = self.distinct(lambda _: self.pii_frame(base, topic, entry["pii_correction"]))
        else:
            def make(attempt):
                lead, tail = self.framing(attempt)
                return frame(lead, base, tail), lead, tail
            query, lead, tail = self.distinct(make)
        self.history.append({"key": key, "lead": lead, "tail": tail, "query": query, "paras": paras,
                             "pii": values})
        return query, values

    def near_dup(self, compatible):
        """Re-ask an earlier query: a paraphrase, a surface variant or an exact repeat."""
        earlier = self.rng.choice(compatible)
        kind = self.rng.choices(["paraphrase", "surface", "exact"], [0.55, 0.33, 0.12])[0]
        if earlier["pii"]:  # the same user asking again; never mangle the planted values
            kind = "exact"
        if kind == "paraphrase" and earlier["paras"]:
            query = frame(earlier["lead"], self.rng.choice(earlier["paras"]), earlier["tail"])
        elif kind == "exact":
            query = earlier["query"]
        else:
            kind = "surface"
            query = surface_variant(self.rng, earlier["query"])
        self.stats[f"near_dup_{kind}"] += 1
        return earlier["key"], query, earlier["pii"]

    def want_dup(self, remaining_eligible):
        if self.dups_left <= 0 or len(self.history) < 40:
            return False
        return self.rng.random() < self.dups_left / max(1, remaining_eligible)

    def contexts(self, relevant, n=None, unrelated_to=None, low=False):
        """2-4 retrieved docs: relevant ones first (usually), distractors after, scores descending."""
        rng = self.rng
        n = max(n or rng.choices([2, 3, 4], [0.3, 0.45, 0.25])[0], len(relevant))
        chosen = [self.docs[r] for r in relevant]
        banned = {d["id"] for d in chosen}
        if unrelated_to:
            banned |= {d["id"] for d in KB if d["topic"] == unrelated_to["topic"] or d["id"] == unrelated_to["id"]}
        topic = chosen[0]["topic"] if chosen else None
        while len(chosen) < n:
            same = [d for d in KB if d["topic"] == topic and d["id"] not in banned and not d["pii"]]
            pool = same if same and rng.random() < 0.5 else [
                d for d in KB if d["id"] not in banned and not d["pii"]]
            d = rng.choice(pool)
            chosen.append(d)
            banned.add(d["id"])
        top = rng.uniform(0.42, 0.66) if low else (rng.uniform(0.72, 0.95) if rng.random() < 0.9
                                                  else rng.uniform(0.55, 0.72))
        scores = [top]
        for i in range(1, n):
            drop = rng.uniform(0.005, 0.06) if i < len(relevant) else rng.uniform(0.03, 0.2)
            scores.append(max(0.12, scores[-1] - drop))
        if relevant and len(relevant) == 1 and n > 1 and not low and rng.random() < 0.06:
            chosen[0], chosen[1] = chosen[1], chosen[0]  # a distractor narrowly outranks the relevant doc
            scores[1] = max(scores[1], scores[0] - rng.uniform(0.01, 0.06))
            self.stats["relevant_not_first"] += 1
        return [{"id": d["id"], "text": d["text"], "score": round(s, 2)} for d, s in zip(chosen, scores)]

    # -- query selection ----------------------------------------------------
    def choose_answerable(self, entry, need, eligible_left):
        """Return ((doc, qa index), query, pii values)."""
        keys = self.candidates(need)
        key_set = set(keys)
        compatible = [h for h in self.history if h["key"] in key_set]
        if self.rng.random() > 0.05:  # rarely, the same user re-sends a query holding PII
            compatible = [h for h in compatible if not h["pii"]]
        if compatible and not entry["pii_query"] and self.want_dup(eligible_left):
            self.dups_left -= 1
            key, query, values = self.near_dup(compatible)
        else:
            key = self.pick_least_used(keys)
            d = self.docs[key[1]]
            item = d["qa"][key[2]]
            query, values = self.fresh_query(key, item["q"], item["paras"], entry, d["topic"])
        self.usage[key] += 1
        return (self.docs[key[1]], key[2]), query, values

    def choose_unanswerable(self, entry, eligible_left):
        keys = [("un", i, 0) for i in range(len(self.unanswerable))]
        compatible = [h for h in self.history if h["key"][0] == "un"]
        if self.rng.random() > 0.05:  # rarely, the same user re-sends a query holding PII
            compatible = [h for h in compatible if not h["pii"]]
        if compatible and not entry["pii_query"] and self.want_dup(eligible_left):
            self.dups_left -= 1
            key, query, values = self.near_dup(compatible)
        else:
            key = self.pick_least_used(keys)
            u = self.unanswerable[key[1]]
            query, values = self.fresh_query(key, u["q"], u["paras"], entry, u["kb_topic"])
        self.usage[key] += 1
        return self.unanswerable[key[1]], query, values

    def plan_session(self, unit):
        """Pick one doc for a session and a question for each turn (numeric ones for hallucination turns)."""
        rng = self.rng
        need_numeric = [("hallucination" in e["labels"]) for e in unit]
        cands = [d for d in self.qa_docs if len(d["qa"]) >= min(len(unit), 3)
                 and sum(self.is_numeric(("kb", d["id"], i)) for i in range(len(d["qa"]))) >= sum(need_numeric)]
        d = rng.choice(cands)
        pairs = [(d["id"], i) for i in rng.sample(range(len(d["qa"])), len(d["qa"]))]
        others = [(o["id"], i) for o in self.qa_docs if o["topic"] == d["topic"] and o is not d
                  for i in range(len(o["qa"]))]
        rng.shuffle(others)
        pairs += others
        turns, used = [None] * len(unit), set()
        order = sorted(range(len(unit)), key=lambda i: not need_numeric[i])  # numeric turns pick first
        for i in order:
            pick = next(p for p in pairs if p not in used and (not need_numeric[i] or self.is_numeric(("kb",) + p)))
            used.add(pick)
            turns[i] = pick
        if turns[0][0] != d["id"]:  # the session opens on its own doc
            j = next(i for i, t in enumerate(turns) if t[0] == d["id"])
            turns[0], turns[j] = turns[j], turns[0]
        return turns

    def session_query(self, entry, turn, turns):
        doc_id, qi = turns[turn]
        item = self.docs[doc_id]["qa"][qi]
        if turn == 0:
            query, values = self.fresh_query(("kb", doc_id, qi), item["q"], item["paras"], entry,
                                             self.docs[doc_id]["topic"])
        else:
            same_doc = doc_id == turns[0][0]

            def make(attempt):
                if attempt == 0 and same_doc and item["follow"] and self.rng.random() < 0.6:
                    query = item["follow"]
                elif attempt < 20:
                    tail = self.rng.choice(TAILS) if self.rng.random() < 0.25 else ""
                    query = self.rng.choice(FOLLOW_LEADS) + lower_first(item["q"]) + tail
                else:
                    query = f"{self.rng.choice(FOLLOW_LEADS)}{self.rng.choice(PERSONAS).lower()} " \
                            f"{self.rng.choice(SITUATIONS)} {item['q']}"
                if entry["pii_query"]:
                    return self.pii_frame(query, self.docs[doc_id]["topic"], entry["pii_correction"])
                return query, {}
            query, values = self.distinct(make)
        self.usage[("kb", doc_id, qi)] += 1
        return (doc_id, qi, query), values

    # -- feedback -----------------------------------------------------------
    def feedback(self, entry, labels, fmt=None):
        fmt = fmt or {}
        case = entry["case"]
        if case == "no_feedback":
            return None
        if case == "positive":
            fb = {"rating": 1, "labels": []}
            if entry["comment"]:
                fb["comment"] = self.rng.choice(COMMENTS["positive"])
            return fb
        shown = [] if entry["unlabelled"] else list(labels)
        fb = {} if entry["no_rating"] else {"rating": -1}
        fb["labels"] = shown
        if entry["comment"]:
            text = fmt.pop("comment_override", None)
            if text is None:
                pool = COMMENTS.get(case) or COMMENTS[labels[0]]
                text = self.rng.choice(pool).format(**fmt)
            if entry["pii_comment"]:
                note, _ = self.pii.fill(self.rng.choice(PII_COMMENT_TEMPLATES))
                text = f"{text}; {note}"
                self.stats["pii_in_comment"] += 1
                self.rec_pii.append("comment")
            fb["comment"] = text
        return fb

    # -- responses per case -------------------------------------------------
    def plain_text(self, d, gold, cited_ok=True):
        style = self.rng.choice(PLAIN_STYLES if cited_ok else PLAIN_STYLES_UNCITED)
        return style.format(gold=gold, gold_l=lower_first(gold), title=d["title"], title_l=d["title"].lower(),
                            id=d["id"], cited=cite(gold, [d["id"]]))

    def rude(self, ans):
        return self.rng.choice(RUDE_STYLES).format(ans=ans, ans_l=lower_first(ans))

    def bogus_citation(self, d, ctx_ids):
        if self.rng.random() < 0.5:
            return self.rng.choice([f"{d['id']}-faq", f"{d['id']}-v2", "tasklane-handbook", "internal-wiki"])
        return self.rng.choice([x["id"] for x in KB if x["id"] not in ctx_ids and not x["stale_of"]])

    def answerable_record(self, entry, d, qi):
        """Cases where the relevant doc is retrieved: positive, no_feedback and behaviour failures."""
        rng, item = self.rng, d["qa"][qi]
        gold, labels = item["gold"], entry["labels"]
        contexts = self.contexts([d["id"]])
        ctx_ids = [c["id"] for c in contexts]
        ideal = answer_json(cite(gold, [d["id"]]), [d["id"]])
        fmt = {"doc": d["id"], "title": d["title"], "right": gold}
        wrong, _ = perturb_number(rng, gold) if "hallucination" in labels else (None, None)
        label_set = set(labels)
        if not labels:
            response = ideal
        elif label_set == {"bad_format"}:
            response = self.plain_text(d, gold)
        elif label_set == {"wrong_tone"}:
            response = answer_json(self.rude(cite(gold, [d["id"]])), [d["id"]])
        elif label_set == {"missing_citation"}:
            response = answer_json(gold, [])
        elif label_set == {"hallucination"}:
            src = d["id"]
            if entry["unlabelled"] or rng.random() < 0.2:
                src = self.bogus_citation(d, ctx_ids)
                self.stats["cites_id_not_in_context"] += 1
            response = answer_json(cite(wrong, [src]), [src])
        elif "policy_violation" in label_set:
            kinds = POLICY_BY_TOPIC.get(d["topic"], [k for k, _ in POLICY_VIOLATIONS])
            kind = rng.choice(kinds)
            sentence = rng.choice([s for k, s in POLICY_VIOLATIONS if k == kind])
            body = f"{cite(gold, [d['id']])} {sentence}"
            if "wrong_tone" in label_set:
                body = self.rude(body)
            response = answer_json(body, [d["id"]])
            fmt["comment_override"] = POLICY_COMMENTS[kind]
            if kind == "other_customer" and "@" in sentence:
                self.stats["pii_in_response"] += 1
                self.rec_pii.append("response")
        elif label_set == {"bad_format", "missing_citation"}:
            response = self.plain_text(d, gold, cited_ok=False)
        elif label_set == {"wrong_tone", "missing_citation"}:
            response = answer_json(self.rude(gold), [])
        elif label_set == {"hallucination", "missing_citation"}:
            response = answer_json(wrong, [])
        elif label_set == {"bad_format", "hallucination"}:
            response = self.plain_text(d, wrong)
        else:
            raise ValueError(labels)
        return contexts, response, ideal, fmt

    def build(self, entry, query_info, weak=None):
        """Return the record fields for ``entry`` (everything but id, timestamp and session id)."""
        rng, case, labels = self.rng, entry["case"], entry["labels"]
        correction = None
        fmt = {}
        if case == "weak_reasoning":
            query, rel_ids, good, bad, right = weak
            contexts = self.contexts(rel_ids)
            correction = answer_json(good, rel_ids)
            response = answer_json(bad, rel_ids)
            fmt = {"right": right}
        elif case in UNANSWERABLE_CASES or "missing_knowledge" in labels:
            u, query = query_info
            contexts = self.contexts([], unrelated_to={"topic": u["kb_topic"], "id": ""}, low=True) \
                if case == "hallucination_no_context" else self.contexts([], low=True)
            fmt = {"topic": u["topic"]}
            if case == "hallucination_no_context":
                src = contexts[0]["id"]
                response = answer_json(cite(u["fake"], [src]), [src])
                correction = IDK_JSON
            elif "bad_format" in labels:
                response = rng.choice(MK_PLAIN)
                correction = IDK_JSON
            else:
                response = IDK_JSON
                correction = answer_json(u["real"], []) if u["real"] else None
        elif case == "stale_knowledge":
            (d, qi), query = query_info
            stale_id = next(s for c, q_i, s in self.stale_pairs if c == d["id"] and q_i == qi)
            stale_doc = self.docs[stale_id]
            rel = [stale_id, d["id"]] if rng.random() < 0.5 else [stale_id]
            contexts = self.contexts(rel)
            response = answer_json(cite(stale_doc["stale"][qi], [stale_id]), [stale_id])
            correction = answer_json(cite(d["qa"][qi]["gold"], [d["id"]]), [d["id"]])
            fmt = {"comment_override": STALE_COMMENTS[stale_id]}
        elif case == "wrong_retrieval":
            (d, qi), query = query_info
            contexts = self.contexts([], unrelated_to=d, low=True)
            first = self.docs[contexts[0]["id"]]
            if rng.random() < 0.4 and first["qa"]:
                response = answer_json(cite(rng.choice(first["qa"])["gold"], [first["id"]]), [first["id"]])
            else:
                response = IDK_JSON
            correction = answer_json(cite(d["qa"][qi]["gold"], [d["id"]]), [d["id"]])
            fmt = {"doc": d["id"]}
        else:
            (d, qi), query = query_info
            contexts, response, correction, fmt = self.answerable_record(entry, d, qi)
        if case in ("positive", "no_feedback"):
            correction = None
        elif not entry["correction"]:
            correction = None
        if entry["pii_correction"] and correction and self.last_pii.get("email"):
            obj = json.loads(correction)
            obj["answer"] += f" We've emailed the details to {self.last_pii['email']}."
            correction = json.dumps(obj, ensure_ascii=False)
            self.stats["pii_in_correction"] += 1
            self.rec_pii.append("correction")
        feedback = self.feedback(entry, labels, fmt)
        return {"query": query, "contexts": contexts, "response": response, "feedback": feedback,
                "correction": correction}

    def generate(self, items, units):
        records = []
        eligible_left = sum(1 for _, u, turn, e in items
                            if len(units[u]) == 1 and e["case"] != "weak_reasoning")
        for t, u, turn, entry in items:
            case = entry["case"]
            self.last_pii, self.rec_pii = {}, []
            weak = query_info = None
            if len(units[u]) > 1:
                if u not in self.sessions:
                    self.sessions[u] = self.plan_session(units[u])
                (doc_id, qi, query), self.last_pii = self.session_query(entry, turn, self.sessions[u])
                query_info = ((self.docs[doc_id], qi), query)
                self.stats["session_records"] += 1
            elif case == "weak_reasoning":
                weak = weak_reasoning_case(self.rng)
                if entry["pii_query"]:
                    q, self.last_pii = self.distinct(
                        lambda _: self.pii_frame(weak[0], "billing", entry["pii_correction"]))
                else:
                    def make(attempt):
                        lead, tail = self.framing(attempt)
                        return frame(lead, weak[0], tail), None
                    q, _ = self.distinct(make)
                weak = (q,) + weak[1:]
            else:
                if is_unanswerable(entry):
                    item, query, self.last_pii = self.choose_unanswerable(entry, eligible_left)
                    query_info = (item, query)
                else:
                    need = ("numeric" if "hallucination" in entry["labels"] and case != "hallucination_no_context"
                            else "stale" if case == "stale_knowledge" else None)
                    pair, query, self.last_pii = self.choose_answerable(entry, need, eligible_left)
                    query_info = (pair, query)
                eligible_left -= 1
            fields = self.build(entry, query_info, weak)
            if self.similar.max_similarity(fields["query"]) >= DETECT:
                self.stats["detectable_near_dups"] += 1
            self.similar.add(fields["query"])
            if self.last_pii:
                self.stats["pii_in_query"] += 1
                self.rec_pii.insert(0, "query")
            if any(self.docs[c["id"]]["pii"] for c in fields["contexts"]):
                self.rec_pii.append("contexts")
            fields["pii"] = self.rec_pii
            records.append((t, u, entry, fields))
        return records


# ---------------------------------------------------------------------------
# Malformed lines
# ---------------------------------------------------------------------------

# (kind, file index); the BOM is added separately to the first line of file 0.
MALFORMED_PLAN = [
    ("truncated_pii", 0), ("trailing_comma", 0), ("single_quotes", 0), ("json_array", 0), ("empty", 0),
    ("query_number", 0), ("invalid_utf8", 0), ("missing_query", 0),
    ("truncated", 1), ("truncated_pii", 1), ("json_string", 1), ("contexts_string", 1), ("rating_bad", 1),
    ("empty", 1), ("single_quotes", 1), ("oversize", 1), ("labels_string", 1),
    ("truncated_pii", 2), ("trailing_comma", 2), ("invalid_utf8", 2), ("missing_query", 2), ("whitespace", 2),
    ("rating_bad", 2), ("contexts_string", 2), ("json_array", 2),
]
BAD_BYTES_MARK = "@@BAD_BYTES@@"


def malformed_lines(rng):
    """Return [(time, kind, payload)] for MALFORMED_PLAN; payload is a record dict or None."""
    writer = LogWriter(rng, build_unanswerable())
    pii = writer.pii
    out = []
    for kind, file_idx in MALFORMED_PLAN:
        t = file_idx * WEEK + rng.randint(3600, WEEK - 3600)
        if kind in ("empty", "whitespace"):
            out.append((t, kind, None))
            continue
        d = rng.choice(writer.qa_docs)
        item = rng.choice(d["qa"])
        query = item["q"]
        if kind in ("truncated_pii", "invalid_utf8"):
            query, _ = pii.fill(rng.choice(PII_TEMPLATES["email"] + PII_TEMPLATES["secret"]), q=query)
        if kind == "invalid_utf8":
            query = f"{query} {BAD_BYTES_MARK}"
        rec = {"query": query, "contexts": writer.contexts([d["id"]]),
               "response": answer_json(cite(item["gold"], [d["id"]]), [d["id"]]), "model": MODEL,
               "feedback": {"rating": 1, "labels": []}}
        if kind == "oversize":
            unit = cite(item["gold"], [d["id"]]) + " "
            rec["response"] = unit * (300_000 // len(unit) + 1)
            rec["feedback"] = {"rating": -1, "labels": [], "comment": "model got stuck in a loop"}
        out.append((t, kind, rec))
    return out


def serialize_malformed(kind, rec):
    """Bytes for one malformed line."""
    if rec is None:
        return b"   " if kind == "whitespace" else b""
    if kind == "query_number":
        rec["query"] = 404
    elif kind == "contexts_string":
        rec["contexts"] = ", ".join(c["id"] for c in rec["contexts"])
    elif kind == "rating_bad":
        rec["feedback"]["rating"] = "meh"
    elif kind == "labels_string":
        rec["feedback"] = {"rating": -1, "labels": "bad_format"}
    elif kind == "missing_query":
        del rec["query"]
    text = json.dumps(rec, ensure_ascii=False)
    if kind in ("truncated", "truncated_pii"):
        cut = text.index('"contexts"') + 60
        text = text[:cut]
    elif kind == "trailing_comma":
        text = text[:-1] + ",}"
    elif kind == "single_quotes":
        text = repr(rec)
    elif kind == "json_array":
        text = json.dumps([rec], ensure_ascii=False)
    elif kind == "json_string":
        text = json.dumps(json.dumps(rec, ensure_ascii=False), ensure_ascii=False)
    data = text.encode("utf-8")
    if kind == "invalid_utf8":
        data = data.replace(BAD_BYTES_MARK.encode(), b"\xff\xfe")
    return data


# ---------------------------------------------------------------------------
# Assembling and writing the log files
# ---------------------------------------------------------------------------


def assemble_logs(records, malformed):
    """Merge good and malformed lines by time, assign ids and session ids, return bytes per file."""
    merged = [(t, 0, u, "record", (entry, fields)) for t, u, entry, fields in records]
    merged += [(t, 1, -1 - i, kind, rec) for i, (t, kind, rec) in enumerate(malformed)]
    merged.sort(key=lambda x: (x[0], x[1], x[2]))
    files = [[] for _ in LOG_FILES]
    session_ids, next_id, next_session = {}, 1, 1
    for t, _, u, kind, payload in merged:
        ts = (LOG_START + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")
        file_idx = min(t // WEEK, len(LOG_FILES) - 1)
        if u not in session_ids:
            session_ids[u] = f"s-{next_session}"
            next_session += 1
        head = {"id": None, "timestamp": ts, "session_id": session_ids[u]}
        if kind == "record":
            entry, fields = payload
            head["id"] = f"log-{next_id:05d}"
            next_id += 1
            rec = dict(head, query=fields["query"], contexts=fields["contexts"], response=fields["response"],
                       model=MODEL)
            fb, corr = fields["feedback"], fields["correction"]
            if fb is not None:
                rec["feedback"] = fb
            elif entry["pii_query"] or len(fields["query"]) % 2:  # deterministic mix of absent / null
                rec["feedback"] = None
            if corr is not None:
                rec["correction"] = corr
            elif entry["case"] in FAILURE_CASES and len(fields["response"]) % 3 == 0:
                rec["correction"] = None
            files[file_idx].append(json.dumps(rec, ensure_ascii=False).encode("utf-8"))
        elif payload is None:
            files[file_idx].append(serialize_malformed(kind, None))
        else:
            head["id"] = f"log-{next_id:05d}"
            next_id += 1
            files[file_idx].append(serialize_malformed(kind, dict(head, **payload)))
    files[0][0] = b"\xef\xbb\xbf" + files[0][0]
    return [b"\n".join(lines) + b"\n" for lines in files], [len(lines) for lines in files]


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# General instruction data
# ---------------------------------------------------------------------------

SENTENCES = ["The Quick Brown Fox Jumps Over The Lazy Dog.", "Paris Is The Capital Of France.",
             "My Meeting With Sarah Starts At Noon.", "PLEASE CLOSE THE DOOR WHEN YOU LEAVE.",
             "We Shipped The New Release On Friday.", "Water Boils At 100 Degrees Celsius.",
             "The Library Opens At 9 AM On Weekdays.", "Tom And Lisa Went Hiking In The Alps.",
             "Remember To Water The Plants Every Monday.", "The Moon Orbits The Earth.",
             "Our Team Won The Regional Championship.", "Bananas Are Rich In Potassium.",
             "The Train To Boston Leaves At Six.", "Always Back Up Your Files.", "THE REPORT IS DUE TOMORROW.",
             "Mount Everest Is The Tallest Mountain On Earth.", "She Reads Two Books Every Month.",
             "The Coffee Shop Is Closed On Sundays.", "Rain Is Expected This Afternoon.",
             "The Museum Has A New Dinosaur Exhibit.", "Cats Sleep For Most Of The Day.",
             "Our Office Moved To The Fifth Floor.", "The Concert Was Cancelled Due To Rain.",
             "Light Travels Faster Than Sound.", "Dinner Will Be Ready At Seven."]
CATEGORIES = {"fruits": ["apple", "banana", "cherry", "mango", "pear", "orange", "grape", "kiwi"],
              "primary colors": ["red", "yellow", "blue"],
              "planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"],
              "days of the week": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
              "oceans": ["Pacific", "Atlantic", "Indian", "Arctic", "Southern"],
              "mammals": ["dog", "whale", "elephant", "horse", "bat", "lion", "dolphin"],
              "vegetables": ["carrot", "broccoli", "spinach", "potato", "onion", "pepper"],
              "musical instruments": ["piano", "guitar", "violin", "drum", "flute", "trumpet"],
              "continents": ["Africa", "Asia", "Europe", "Antarctica", "Australia", "North America", "South America"],
              "programming languages": ["Python", "Java", "C", "Rust", "Go", "JavaScript"],
              "months of the year": ["January", "March", "May", "July", "September", "November"],
              "shapes": ["circle", "square", "triangle", "rectangle", "hexagon"],
              "kitchen utensils": ["spoon", "fork", "whisk", "ladle", "spatula"],
              "sports": ["soccer", "tennis", "basketball", "swimming", "cycling", "baseball"]}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Canada": "Ottawa", "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi", "Norway": "Oslo",
            "Portugal": "Lisbon", "Greece": "Athens", "Peru": "Lima", "Ireland": "Dublin", "Poland": "Warsaw",
            "Sweden": "Stockholm", "Thailand": "Bangkok", "Austria": "Vienna", "Finland": "Helsinki",
            "Hungary": "Budapest"}
OPPOSITES = {"hot": "Cold", "up": "Down", "early": "Late", "happy": "Sad", "fast": "Slow", "full": "Empty",
             "wet": "Dry", "push": "Pull", "win": "Lose", "true": "False", "inside": "Outside", "open": "Closed"}
ONE_WORD = [("What color is a ripe banana?", "Yellow"), ("What is the largest planet in our solar system?", "Jupiter"),
            ("What is frozen water called?", "Ice"), ("How many legs does a spider have?", "Eight"),
            ("Which planet is known as the Red Planet?", "Mars"), ("What is the plural of mouse?", "Mice"),
            ("What is the plural of child?", "Children"), ("What is the chemical symbol for gold?", "Au"),
            ("Which ocean is the largest?", "Pacific"), ("Which animal is known as the king of the jungle?", "Lion"),
            ("What is the past tense of run?", "Ran"), ("What is the past tense of go?", "Went"),
            ("How many days are in a week?", "Seven"), ("What do bees make?", "Honey"),
            ("Which season comes after winter?", "Spring"), ("What is the opposite of north?", "South"),
            ("How many sides does a triangle have?", "Three"), ("What star is at the center of our solar system?", "Sun")]
DEFINITIONS = {
    "noun": "A noun is a word that names a person, place, thing or idea.",
    "verb": "A verb is a word that describes an action, state or occurrence.",
    "adjective": "An adjective is a word that describes or modifies a noun.",
    "prime number": "A prime number is a whole number greater than 1 whose only divisors are 1 and itself.",
    "photosynthesis": "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose and oxygen.",
    "gravity": "Gravity is the force that attracts objects with mass toward each other.",
    "evaporation": "Evaporation is the process in which a liquid turns into a gas.",
    "democracy": "Democracy is a system of government in which citizens choose their leaders by voting.",
    "metaphor": "A metaphor is a figure of speech that describes something by saying it is something else.",
    "synonym": "A synonym is a word that means the same or nearly the same as another word.",
    "antonym": "An antonym is a word that means the opposite of another word.",
    "equator": "The equator is the imaginary line around the middle of the Earth, halfway between the poles.",
    "mammal": "A mammal is a warm-blooded animal that has hair and feeds its young with milk.",
    "volcano": "A volcano is an opening in the Earth's crust through which lava, ash and gases erupt.",
    "molecule": "A molecule is a group of two or more atoms bonded together.",
    "fraction": "A fraction is a number that represents a part of a whole, written as one number over another.",
    "perimeter": "The perimeter is the total distance around the edge of a shape.",
    "habitat": "A habitat is the natural home or environment of a plant or animal.",
    "ecosystem": "An ecosystem is a community of living things interacting with their physical environment.",
    "renewable energy": "Renewable energy is energy from sources that are naturally replenished, such as sunlight and wind.",
    "inflation": "Inflation is the general rise in prices over time, which reduces the purchasing power of money.",
    "budget": "A budget is a plan for how money will be earned and spent over a period of time.",
    "algorithm": "An algorithm is a step-by-step set of instructions for solving a problem.",
    "spreadsheet": "A spreadsheet is a grid of rows and columns used to organize and calculate data.",
    "glacier": "A glacier is a large, slow-moving mass of ice formed from compacted snow.",
    "peninsula": "A peninsula is a piece of land surrounded by water on three sides.",
    "orbit": "An orbit is the curved path an object takes around a star, planet or moon.",
    "fossil": "A fossil is the preserved remains or trace of a plant or animal from long ago.",
    "thermometer": "A thermometer is an instrument used to measure temperature.",
    "deadline": "A deadline is the latest time by which something must be finished.",
}
CONVERSIONS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
               ("liters", "milliliters", 1000), ("hours", "minutes", 60), ("minutes", "seconds", 60),
               ("days", "hours", 24), ("weeks", "days", 7), ("feet", "inches", 12), ("yards", "feet", 3),
               ("centimeters", "millimeters", 10), ("dozen", "items", 12)]


def general_items(rng):
    """~300 short instruction-following items with correct answers."""
    items, seen = [], set()

    def add(query, answer):
        if query not in seen:
            seen.add(query)
            items.append((query, answer))

    while len(items) < 70:  # arithmetic word problems
        kind = rng.randrange(8)
        a, b = rng.randint(2, 30), rng.randint(2, 12)
        if kind == 0:
            add(f"Sam has {a} apples and buys {b} more. How many apples does Sam have now?",
                f"Sam has {a + b} apples ({a} + {b} = {a + b}).")
        elif kind == 1:
            a += b
            add(f"Maria had {a} stickers and gave {b} to a friend. How many stickers does she have left?",
                f"She has {a - b} stickers left ({a} − {b} = {a - b}).")
        elif kind == 2:
            add(f"A box holds {a} pencils. How many pencils are in {b} boxes?",
                f"There are {a * b} pencils ({b} × {a} = {a * b}).")
        elif kind == 3:
            add(f"{a * b} cookies are shared equally among {b} children. How many cookies does each child get?",
                f"Each child gets {a} cookies ({a * b} ÷ {b} = {a}).")
        elif kind == 4:
            s, h = rng.choice([40, 50, 60, 80, 90, 100, 120]), rng.randint(2, 6)
            add(f"A car drives at {s} km/h for {h} hours. How far does it travel?",
                f"It travels {s * h} km ({s} × {h} = {s * h}).")
        elif kind == 5:
            p, q = rng.randint(2, 9), rng.randint(1, 5)
            add(f"A notebook costs ${p} and a pen costs ${q}. How much do 2 notebooks and 3 pens cost?",
                f"They cost ${2 * p + 3 * q} (2 × ${p} + 3 × ${q} = ${2 * p} + ${3 * q} = ${2 * p + 3 * q}).")
        elif kind == 6:
            p, d = rng.choice([20, 40, 60, 80, 120, 150, 200]), rng.choice([10, 20, 25, 50])
            sale = p * (100 - d) / 100
            add(f"A jacket costs ${p} and is {d}% off. What is the sale price?",
                f"The sale price is {money(sale)} ({d}% of ${p} is {money(p * d / 100)}, and ${p} − {money(p * d / 100)} = {money(sale)}).")
        else:
            x, y = rng.randint(2, 20), rng.randint(2, 20)
            z = 3 * rng.randint(4, 20) - x - y
            if z > 0:
                add(f"What is the average of {x}, {y} and {z}?",
                    f"The average is {(x + y + z) // 3} (({x} + {y} + {z}) ÷ 3 = {x + y + z} ÷ 3 = {(x + y + z) // 3}).")
    for s in SENTENCES:  # case rewriting
        add(f"Rewrite this sentence in lowercase: {s}", s.lower())
    for s in SENTENCES[::2]:
        add(f"Rewrite this sentence in uppercase: {s.lower()}", s.upper())
    names = list(CATEGORIES)
    for wording in ("List three {c} as bullet points.", "Give me three {c}, one per bullet point.",
                    "Name three {c}. Format the answer as a bulleted list."):
        for c in names:
            picks = rng.sample(CATEGORIES[c], 3)
            add(wording.format(c=c), "\n".join(f"- {p}" for p in picks))
    for country, city in CAPITALS.items():
        add(f"Answer in one word: What is the capital of {country}?", city)
    for word, opp in OPPOSITES.items():
        add(f"Answer in one word: What is the opposite of \"{word}\"?", opp)
    for q, a in ONE_WORD:
        add(f"Answer in one word: {q}", a)
    for term, definition in DEFINITIONS.items():
        add(rng.choice([f"Define \"{term}\" in one sentence.", f"What is a short definition of {term}?",
                        f"In one sentence, what does \"{term}\" mean?"]), definition)
    while len(items) < 280:  # unit conversions
        if rng.random() < 0.15:
            c = 5 * rng.randint(-8, 20)
            add(f"Convert {c}°C to Fahrenheit.", f"{c}°C is {c * 9 // 5 + 32}°F ({c} × 9/5 + 32 = {c * 9 // 5 + 32}).")
            continue
        src, dst, factor = rng.choice(CONVERSIONS)
        v = rng.randint(2, 48)
        add(f"How many {dst} are in {v} {src}?", f"{v} {src} is {v * factor:,} {dst} ({v} × {factor:,} = {v * factor:,}).")
    while len(items) < 300:  # small list tasks
        nums = rng.sample(range(1, 60), 4)
        if rng.random() < 0.5:
            add(f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                ", ".join(map(str, sorted(nums))))
        else:
            start, step = rng.randint(1, 20), rng.randint(2, 9)
            seq = [start + step * i for i in range(4)]
            add(f"What is the next number in the sequence {', '.join(map(str, seq))}, ...?",
                f"{start + step * 4} (each number is {step} more than the one before).")
    rng.shuffle(items)
    return [{"id": f"gen-{i:04d}", "query": q, "answer": a} for i, (q, a) in enumerate(items, 1)]


# ---------------------------------------------------------------------------
# Checks, summary and README
# ---------------------------------------------------------------------------


def check_kb():
    ids = [d["id"] for d in KB]
    assert len(ids) == len(set(ids)) and len(KB) >= 44, "KB ids must be unique, 44+ docs"
    for d in KB:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", d["id"]), d["id"]
        for item in d["qa"]:
            assert item["gold"] in d["text"], (d["id"], item["gold"])
            assert 1 <= len(item["paras"]) <= 2, item["q"]
        assert d["qa"] or d["stale_of"], d["id"]
        for sentence in d["stale"].values():
            assert sentence in d["text"], (d["id"], sentence)
        assert 2 <= len(d["qa"]) <= 4 or d["stale_of"], d["id"]


def summarize(records, file_lines, malformed, writer):
    cases = Counter(e["case"] for _, _, e, _ in records)
    corrected = Counter(e["case"] for _, _, e, f in records if f["correction"])
    unlabelled = Counter(e["case"] for _, _, e, _ in records if e["unlabelled"])
    labels = Counter()
    for _, _, e, f in records:
        fb = f["feedback"]
        labels.update(fb["labels"] if fb else [])
    pii_records = sum(1 for _, _, _, f in records if f["pii"])
    pii_context_only = sum(1 for _, _, _, f in records if f["pii"] == ["contexts"])
    unit_sizes = Counter(u for _, u, _, _ in records)
    total_lines = sum(file_lines)
    s = writer.stats
    return {"cases": cases, "corrected": corrected, "unlabelled": unlabelled, "labels": labels,
            "records": len(records), "total_lines": total_lines, "malformed": malformed,
            "pii_records": pii_records, "pii_context_only": pii_context_only,
            "session_records": s["session_records"], "sessions": sum(1 for k in unit_sizes.values() if k > 1),
            "near_dups": {k: s[f"near_dup_{k}"] for k in ("paraphrase", "surface", "exact")},
            "multi_combos": Counter(" + ".join(e["labels"]) for _, _, e, _ in records if e["case"] == "multi_label"),
            "stats": s}


CASE_NOTES = {
    "positive": "rating 1, ideal JSON answer",
    "no_feedback": "ideal JSON answer, feedback absent or null",
    "bad_format": "correct answer as plain text / markdown",
    "wrong_tone": "JSON, correct but rude or sarcastic",
    "policy_violation": "JSON plus a refund exception, discount, legal advice, another customer's data...",
    "missing_citation": "JSON with the right answer, no [doc-id], citations []",
    "hallucination": "JSON stating a wrong number although the context has the right one",
    "hallucination_no_context": "unanswerable question, invented answer citing an unrelated context",
    "missing_knowledge": "unanswerable question, \"I don't know\" JSON, rating -1",
    "stale_knowledge": "stale doc retrieved, old fact cited",
    "wrong_retrieval": "answerable question, unrelated contexts retrieved",
    "weak_reasoning": "multi-step arithmetic question, wrong arithmetic",
    "multi_label": "two labels at once (see below)",
}


def readme_text(summary, sizes, kb_count, gen_count, unans_count):
    n = summary["records"]
    lines = [
        "# Sample data (synthetic)",
        "",
        "Written by `scripts/gen_sample.py` (`python scripts/gen_sample.py --seed 7`); do not edit by hand.",
        "Running the script again with the same seed rewrites every file byte for byte.",
        "",
        "**Everything here is synthetic.** \"Tasklane\" is a fictional project-management SaaS product. All",
        "names, emails, phone numbers, card numbers, IBANs, IP addresses, API keys, tokens and private keys are",
        "fake values generated to exercise the PII / secret scrubbers (cards pass the Luhn check and IBANs have",
        "valid checksums on purpose, but none belongs to anyone).",
        "",
        "## Files",
        "",
        "| file | lines | bytes | content |",
        "| --- | ---: | ---: | --- |",
    ]
    n_stale = sum(1 for d in KB if d["stale_of"])
    n_pii = sum(1 for d in KB if d["pii"])
    desc = {"kb.jsonl": f"{kb_count} knowledge-base docs `{{id, title, text}}` ({n_stale} stale variants, "
                        f"{n_pii} with planted PII)",
            "general.jsonl": f"{gen_count} general instruction items `{{id, query, answer}}` (replay data)"}
    for name, (nlines, nbytes) in sizes.items():
        d = desc.get(name, "assistant logs, one JSON object per line" + (" (gzip)" if name.endswith(".gz") else ""))
        lines.append(f"| `{name}` | {nlines} | {nbytes} | {d} |")
    lines += [
        "",
        "## Log records",
        "",
        "Each well-formed line is `{id, timestamp, session_id, query, contexts, response, model, feedback,",
        "correction}`; `feedback` may be absent or null, `correction` absent or null. The ideal answer is the",
        "compact JSON `{\"answer\": \"... [doc-id].\", \"citations\": [\"doc-id\"]}`, or exactly",
        f"`{IDK_JSON}` when the contexts lack the answer.",
        "",
        f"{n} well-formed records by case:",
        "",
        "| case | records | share | with correction | unlabelled | what it looks like |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in CASE_COUNTS:
        c = summary["cases"][case]
        lines.append(f"| {case} | {c} | {100 * c / n:.1f}% | {summary['corrected'][case]} | "
                     f"{summary['unlabelled'][case]} | {CASE_NOTES[case]} |")
    lines.append(f"| **total** | {n} | 100% | {sum(summary['corrected'].values())} | "
                 f"{sum(summary['unlabelled'].values())} | |")
    lines += ["", "Label combinations in `multi_label`:", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(summary["multi_combos"].items())]
    lines += ["", "Label counts over all feedback (unlabelled records carry `labels: []`):", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(summary["labels"].items())]
    nd = summary["near_dups"]
    st = summary["stats"]
    m = summary["malformed"]
    lines += [
        "",
        "Unlabelled behaviour failures (rating -1, `labels: []`) can be labelled by rules: a plain-text response",
        "is bad_format, an empty citation list is missing_citation, and a citation that is not one of the",
        "record's contexts is hallucination (wrong_tone and policy_violation need a judge).",
        "Knowledge failures (missing_knowledge, stale_knowledge, wrong_retrieval) sometimes carry a",
        "correction; it must never become training data.",
        "",
        "## Other properties",
        "",
        f"- Multi-turn sessions: {summary['sessions']} sessions of 2-4 turns holding {summary['session_records']} "
        f"records ({100 * summary['session_records'] / n:.1f}%); follow-ups ask about the same doc.",
        f"- Near-duplicate queries (re-asking an earlier query): {sum(nd.values())} "
        f"({100 * sum(nd.values()) / n:.1f}%): {nd['paraphrase']} paraphrases, {nd['surface']} casing/punctuation/typo "
        f"variants, {nd['exact']} exact repeats. {st['detectable_near_dups']} queries have a character-5-gram "
        f"Jaccard similarity >= {DETECT} (over lowercased words) to an earlier query. Fresh queries are framed "
        f"to stay below {SIMILAR} against every earlier query, and reworded paraphrases are semantic, not "
        f"textual, duplicates.",
        f"- Records holding planted PII or secrets: {summary['pii_records']} ({100 * summary['pii_records'] / n:.1f}%): "
        f"{st['pii_in_query']} in the query, {st['pii_in_correction']} in the correction, {st['pii_in_comment']} in the "
        f"reviewer comment, {st['pii_in_response']} in the response; {summary['pii_context_only']} only via the two PII docs "
        "in the contexts.",
        f"- Hallucinations citing an id that is not among the contexts: {st['cites_id_not_in_context']}.",
        f"- Records whose relevant context is not ranked first: {st['relevant_not_first']}.",
        f"- {unans_count} questions the knowledge base cannot answer feed hallucination_no_context and",
        "  missing_knowledge.",
        "",
        "## Malformed lines",
        "",
        f"{len(m)} of {summary['total_lines']} log lines ({100 * len(m) / summary['total_lines']:.1f}%) are malformed "
        "on purpose (ids, where the line has one, continue the sequence); some hold planted secrets, so the "
        "quarantine must scrub them too:",
        "",
    ]
    by_kind = Counter(kind for kind, _ in m)
    lines += [f"- `{k}`: {v}" for k, v in by_kind.items()]
    lines += [
        "",
        "Also, `logs/2026-10-01.jsonl` starts with a UTF-8 BOM (its first record is otherwise valid), and",
        "`logs/2026-10-08.jsonl` holds one valid record of about 300 KB (a looping response, rating -1, no",
        "labels) for testing line-size limits; it is counted neither above nor in the case table.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "datasets" / "samples",
                        help="output folder (default datasets/samples)")
    args = parser.parse_args(argv)
    check_kb()
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rng_plan = random.Random(f"{args.seed}-plan")
    unanswerable = build_unanswerable()

    entries = plan_entries(rng_plan)
    units = group_sessions(rng_plan, entries)
    items = schedule(rng_plan, units)
    writer = LogWriter(random.Random(f"{args.seed}-records"), unanswerable)
    records = writer.generate(items, units)
    malformed = malformed_lines(random.Random(f"{args.seed}-malformed"))
    file_bytes, file_lines = assemble_logs(records, malformed)

    sizes = {}
    kb_data = "".join(json.dumps({"id": d["id"], "title": d["title"], "text": d["text"]}, ensure_ascii=False) + "\n"
                      for d in KB).encode("utf-8")
    (out / "kb.jsonl").write_bytes(kb_data)
    sizes["kb.jsonl"] = (len(KB), len(kb_data))
    for name, data, nlines in zip(LOG_FILES, file_bytes, file_lines):
        payload = gzip_bytes(data) if name.endswith(".gz") else data
        (out / "logs" / name).write_bytes(payload)
        sizes[f"logs/{name}"] = (nlines, len(payload))
    general = general_items(random.Random(f"{args.seed}-general"))
    gen_data = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in general).encode("utf-8")
    (out / "general.jsonl").write_bytes(gen_data)
    sizes["general.jsonl"] = (len(general), len(gen_data))

    summary = summarize(records, file_lines, [(k, f) for k, f in MALFORMED_PLAN if k != "oversize"], writer)
    readme = readme_text(summary, sizes, len(KB), len(general), len(unanswerable))
    (out / "README.md").write_text(readme, encoding="utf-8")

    print(f"wrote {out}")
    for name, (nlines, nbytes) in sizes.items():
        print(f"  {name:28s} {nlines:5d} lines {nbytes:9d} bytes")
    n = summary["records"]
    print(f"\n{n} well-formed records by case:")
    for case in CASE_COUNTS:
        c = summary["cases"][case]
        print(f"  {case:26s} {c:4d} {100 * c / n:5.1f}%  corrections {summary['corrected'][case]:3d}"
              f"  unlabelled {summary['unlabelled'][case]:3d}")
    nd = summary["near_dups"]
    print(f"\nsessions: {summary['sessions']} holding {summary['session_records']} records "
          f"({100 * summary['session_records'] / n:.1f}%)")
    print(f"near-duplicate queries: {sum(nd.values())} ({100 * sum(nd.values()) / n:.1f}%) {dict(nd)}; "
          f"{summary['stats']['detectable_near_dups']} at char-5-gram Jaccard >= {DETECT}, "
          f"{summary['stats']['framing_fallback']} framing fallbacks")
    print(f"records with PII/secrets: {summary['pii_records']} ({100 * summary['pii_records'] / n:.1f}%)")
    m = len(summary["malformed"])
    print(f"malformed lines: {m} of {summary['total_lines']} ({100 * m / summary['total_lines']:.1f}%), "
          f"plus a BOM and one valid ~300 KB line")


if __name__ == "__main__":
    main()
