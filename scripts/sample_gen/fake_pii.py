"""Fake personal data and secrets to plant in the sample (all values are synthetic): names,
emails, phones, Luhn-valid card numbers, checksum-valid IBANs, IPs and API keys / tokens."""

from __future__ import annotations

import base64
import json
import string

from .source import DOMAINS, FIRST, KNOWN_CARDS, KNOWN_IBANS, LAST

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

